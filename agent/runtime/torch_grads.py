"""Gradients of a model on a GPU as views of one flat device buffer, reduced by the
collective library straight from device memory (the torch runtime's GPU path).

:class:`~agent.runtime.torch.TorchModel` keeps every ``.grad`` a view of one flat
float32 buffer. For a model on a GPU that buffer is a :class:`DeviceGradients` in device
memory: backward accumulates into it, each bucket but the last is handed to
``Communicator.allreduce_async`` as a CUDA tensor, which the library stages through
pinned host memory in chunks pipelined with the ring (docs/native.md, "CUDA tensors"),
and the optimizer reads the reduced values in place. Only the last bucket, which shares
its collective with the step's scalars, is copied to the host buffer and back.

``ADAPTRAIN_TORCH_GRADS_ON_DEVICE`` chooses: ``auto`` (default) does this for a model on
a GPU when the library can stage CUDA tensors (it loads the CUDA runtime PyTorch
already loaded) and otherwise warns once and copies every gradient through the host as
before; ``off`` always copies through the host; ``always`` also uses a flat tensor
buffer for a model on the CPU (the same code path over host DLPack tensors, which is
how it is tested without a GPU).

Not yet run on a GPU: see docs/pytorch.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

ENV = "ADAPTRAIN_TORCH_GRADS_ON_DEVICE"
_CHOICES = ("auto", "off", "always")


def mode() -> str:
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"{ENV}={value!r} is not valid: use one of {', '.join(_CHOICES)}")
    return value


def _library_stages(device: torch.device) -> str | None:
    """None when the collective library can stage CUDA tensors on ``device``; else why not."""
    try:
        from agent.native import _collective

        _collective._cuda_stream(device.index if device.index is not None else 0)
    except Exception as exc:  # noqa: BLE001 - reported, then the host path is used
        return f"{type(exc).__name__}: {exc}"
    return None


def for_model(params: Sequence[torch.nn.Parameter], device: torch.device) -> DeviceGradients | None:
    """The device buffer for these parameters, or None: keep the gradients on the host."""
    chosen = mode()
    if chosen == "off" or (device.type == "cpu" and chosen != "always"):
        return None
    if device.type == "cuda":
        why = _library_stages(device)
        if why is not None:
            print(
                f"[adaptrain] the collective library cannot reduce CUDA gradients in place "
                f"({why}); copying them through host memory instead (set {ENV}=off to "
                "silence this)",
                file=sys.stderr,
                flush=True,
            )
            return None
    return DeviceGradients(params, device)


class DeviceGradients:
    """One flat float32 buffer on ``device`` whose slices are the parameters' ``.grad``
    (in the order and at the offsets of the host buffer)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], device: torch.device) -> None:
        self._params = list(params)
        sizes = [p.numel() for p in self._params]
        self._offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self._sizes = sizes
        self.flat = torch.zeros(sum(sizes), dtype=torch.float32, device=device)

    def point_grads(self) -> None:
        for p, offset, size in zip(self._params, self._offsets, self._sizes, strict=True):
            p.grad = self.flat[offset : offset + size].view_as(p)

    def bucket(self, start: int, end: int) -> torch.Tensor:
        """The slice ``[start, end)``: a contiguous CUDA tensor for the library."""
        return self.flat[start:end]

    def squared_norm(self, start: int, end: int) -> float:
        return float(self.squared_norm_later(start, end))

    def squared_norm_later(self, start: int, end: int) -> torch.Tensor:
        """The squared norm of ``[start, end)`` as a 0-d tensor on the device, queued on
        the current stream (ahead of the bucket's allreduce, which is ordered after it):
        a gradient hook must not wait for the GPU."""
        part = self.flat[start:end]
        return torch.dot(part, part)

    def to_host(self, host: torch.Tensor, start: int, end: int) -> None:
        """Copy ``[start, end)`` into the host buffer (waits for it)."""
        with torch.no_grad():
            host[start:end].copy_(self.flat[start:end])

    def from_host(self, host: torch.Tensor, start: int, end: int) -> None:
        with torch.no_grad():
            self.flat[start:end].copy_(host[start:end], non_blocking=False)

    def zero_(self) -> Any:
        return self.flat.zero_()
