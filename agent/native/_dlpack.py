"""DLPack tensors (torch, CuPy, anything with ``__dlpack__``) for the facade's in-place
collectives.

NumPy arrays keep their own path in :mod:`agent.native`. Any other object with
``__dlpack__`` and ``__dlpack_device__`` is exported here, once per call, as a DLPack
capsule that the native module reduces in place:

- host memory (``kDLCPU``, and ``kDLCUDAHost``, pinned memory the host addresses):
  zero-copy, the same native path as a NumPy array;
- CUDA memory (``kDLCUDA``): the native module stages it through a pinned host buffer
  in chunks, pipelined with the collective (docs/native.md, "CUDA tensors"). The
  capsule is made with ``__dlpack__(stream=S)``, where ``S`` is the library's download
  stream for the tensor's device, so the producer (PyTorch, CuPy) orders the work
  queued on its current stream before the library's copies: queue the tensor's
  producing work on the current stream (the default) or synchronise before the call.
  The call (or ``Handle.wait()``) returns once the result is back in device memory.

Anything else is refused with a ``ValueError`` that says where the tensor should be.
"""

from __future__ import annotations

from typing import Any

from agent.native import _collective

# DLPack's DLDeviceType values.
KDL_CPU = 1
KDL_CUDA = 2
KDL_CUDA_HOST = 3
_DEVICE_NAMES = {
    4: "OpenCL",
    7: "Vulkan",
    8: "Metal",
    9: "VPI",
    10: "ROCm",
    11: "ROCm host",
    13: "CUDA managed memory",
    14: "oneAPI",
}


def is_tensor(x: object) -> bool:
    """True for a DLPack producer that is not a NumPy array."""
    return hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__")


def device_of(x: Any, operation: str) -> tuple[int, int]:
    """``(DLPack device type, device index)`` of ``x``; ValueError for a device the
    collectives cannot use."""
    device_type, device_id = (int(v) for v in x.__dlpack_device__())
    if device_type not in (KDL_CPU, KDL_CUDA, KDL_CUDA_HOST):
        where = _DEVICE_NAMES.get(device_type, f"DLPack device type {device_type}")
        raise ValueError(
            f"{operation} takes host (CPU) or CUDA tensors; this one is in {where}: "
            "copy it to a CUDA device or to the host first"
        )
    return device_type, device_id


def dtype_name(x: Any) -> str:
    """The element type's name as NumPy spells it (``torch.float32`` -> ``float32``)."""
    return str(getattr(x, "dtype", "")).rsplit(".", 1)[-1]


def export(x: Any, operation: str) -> Any:
    """A DLPack capsule of ``x`` for one native call (see the module docstring)."""
    device_type, device_id = device_of(x, operation)
    if getattr(x, "requires_grad", False):
        raise ValueError(
            f"{operation} works in place and cannot take a tensor that requires grad: "
            "pass x.detach() (or call it under torch.no_grad() on the .grad)"
        )
    if device_type != KDL_CUDA:
        return x.__dlpack__()
    return x.__dlpack__(stream=_collective._cuda_stream(device_id))
