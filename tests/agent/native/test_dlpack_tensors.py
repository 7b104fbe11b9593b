"""DLPack tensors in the in-place collectives: host tensors (torch CPU, and NumPy through
``__dlpack__``) are reduced in place exactly as NumPy arrays are, and tensors the library
cannot use are refused with a message that says what to do.

The CUDA path cannot run here (no GPU): its staging pipeline is tested in C++ with a fake
device (agent/native/tests/test_staging.cc), and these tests check what a machine
without a CUDA runtime, or without a GPU, is told. ``scripts/gpu_check`` runs it on a GPU.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from native_ranks import free_peers, run_ranks

from agent.native import Communicator, _collective

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[3]
DTYPES = ("float32", "float64", "float16", "int32", "int64")
SIZES = (0, 1, 1001, 300_000)  # 300_000 float32: "auto" runs the ring


class DLPackOnly:
    """A producer known only through the DLPack protocol (here NumPy's own __dlpack__)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.dtype = array.dtype

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.array.__dlpack_device__()


def rank_input(rank: int, dtype: str, size: int, seed: int) -> np.ndarray:
    """Small integers: their sums are exact in every dtype, so the bits do not depend on
    the order the tree and the star combine ranks in (the order data arrives)."""
    rng = np.random.default_rng(seed * 10 + rank)
    return rng.integers(-100, 100, size).astype(dtype)


def cases() -> list[tuple[str, str, int]]:
    return [
        (dtype, op, size)
        for dtype in DTYPES
        for op in ("sum", "mean", "min", "max")
        if not (op == "mean" and dtype.startswith("int"))
        for size in SIZES
    ]


def host_tensor_rank(rank: int, peers: list[str]) -> list[str]:
    """Per case, what differed between the NumPy array, the torch CPU tensor and the
    NumPy-through-DLPack producer (empty: nothing)."""
    problems: list[str] = []
    with Communicator(rank, peers, timeout_s=60) as comm:
        for seed, (dtype, op, size) in enumerate(cases()):
            base = rank_input(rank, dtype, size, seed)
            reference = comm.allreduce(base.copy(), op=op)
            tensor = torch.from_numpy(base.copy())
            pointer = tensor.data_ptr()
            returned = comm.allreduce(tensor, op=op)
            wrapped = DLPackOnly(base.copy())
            comm.allreduce(wrapped, op=op)
            name = f"allreduce {dtype} {op} {size}"
            if returned is not tensor or tensor.data_ptr() != pointer:
                problems.append(f"{name}: the torch tensor was not reduced in place")
            if tensor.numpy().tobytes() != reference.tobytes():
                problems.append(f"{name}: torch tensor differs from the NumPy array")
            if wrapped.array.tobytes() != reference.tobytes():
                problems.append(f"{name}: NumPy through DLPack differs from the NumPy array")
        # broadcast, the async form and allgather on host tensors
        data = torch.arange(1001, dtype=torch.float64) * (rank + 1)
        comm.broadcast(data, root=1)
        if not torch.equal(data, torch.arange(1001, dtype=torch.float64) * 2):
            problems.append("broadcast of a torch tensor did not give root 1's values")
        pending = torch.full((4, 5), float(rank + 1))
        if comm.allreduce_async(pending, op="max").wait() is not pending:
            problems.append("allreduce_async did not return the tensor")
        if not torch.equal(pending, torch.full((4, 5), float(len(peers)))):
            problems.append("allreduce_async of a torch tensor gave the wrong values")
        gathered = comm.allgather(torch.tensor([rank, 10 * rank], dtype=torch.int32))
        expected = np.array([[r, 10 * r] for r in range(len(peers))], np.int32)
        if not np.array_equal(gathered, expected):
            problems.append(f"allgather of a torch tensor gave {gathered.tolist()}")
    return problems


def test_host_dlpack_tensors_reduce_in_place_exactly_as_numpy_arrays_for_every_dtype() -> None:
    results = run_ranks(host_tensor_rank, 3, timeout_s=180)
    for rank, problems in results.items():
        assert problems == [], f"rank {rank}: {problems}"


@pytest.fixture
def single() -> Any:
    with Communicator(0, free_peers(1), timeout_s=10) as comm:
        yield comm


def test_a_non_contiguous_tensor_is_refused_with_what_to_do(single: Communicator) -> None:
    strided = torch.zeros((4, 6))[:, ::2]
    with pytest.raises(ValueError, match=r"C-contiguous.*x\.contiguous\(\)"):
        single.allreduce(strided)
    with pytest.raises(ValueError, match="C-contiguous"):
        single.broadcast(torch.zeros((4, 6)).t())


def test_an_unsupported_dtype_tensor_is_refused(single: Communicator) -> None:
    with pytest.raises(ValueError, match="float32, float64, float16, int32 or int64"):
        single.allreduce(torch.zeros(8, dtype=torch.int8))
    with pytest.raises(ValueError, match='op="mean" is not defined for int32'):
        single.allreduce(torch.zeros(8, dtype=torch.int32), op="mean")


def test_a_tensor_that_requires_grad_is_refused(single: Communicator) -> None:
    with pytest.raises(ValueError, match=r"requires grad: pass x\.detach\(\)"):
        single.allreduce(torch.zeros(8, requires_grad=True))


class OnDevice(DLPackOnly):
    """NumPy memory that says it lives on another DLPack device."""

    def __init__(self, array: np.ndarray, device: tuple[int, int]) -> None:
        super().__init__(array)
        self.device = device

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.device


def test_a_tensor_on_an_unsupported_device_is_refused_by_the_facade(single: Communicator) -> None:
    with pytest.raises(ValueError, match="host .CPU. or CUDA tensors; this one is in Metal"):
        single.allreduce(OnDevice(np.zeros(4, np.float32), (8, 0)))
    with pytest.raises(ValueError, match="CUDA managed memory"):
        single.broadcast(OnDevice(np.zeros(4, np.float32), (13, 0)))
    with pytest.raises(ValueError, match=r"allgather takes host arrays.*x\.cpu\(\)"):
        single.allgather(OnDevice(np.zeros(4, np.float32), (2, 0)))


def capsule_on_device(array: np.ndarray, device_type: int, device_id: int = 0) -> Any:
    """A DLPack capsule of ``array`` whose DLTensor claims another device (the native
    module's own check, for callers that skip the facade)."""
    capsule = array.__dlpack__()
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    managed = get(capsule, b"dltensor")
    # DLManagedTensor starts with DLTensor {void* data; DLDevice {int32 type, int32 id}; ...}
    ctypes.c_int32.from_address(managed + 8).value = device_type
    ctypes.c_int32.from_address(managed + 12).value = device_id
    return capsule


def test_the_native_module_refuses_a_device_it_cannot_use(single: Communicator) -> None:
    native = single._native
    with pytest.raises(ValueError, match="this one is in Vulkan"):
        native.allreduce(capsule_on_device(np.zeros(4, np.float32), 7), "sum", "")
    with pytest.raises(ValueError, match="CUDA managed memory"):
        native.broadcast(capsule_on_device(np.zeros(4, np.float32), 13), 0, "")


NO_RUNTIME = """
import numpy as np, sys
sys.path.insert(0, {tests!r})
from test_dlpack_tensors import OnDevice, capsule_on_device
from agent.native import Communicator, _collective
from agent.local import peer_list
errors = []
for attempt in (
    lambda: _collective._cuda_stream(0),
    lambda: comm.allreduce(OnDevice(np.ones(4, np.float32), (2, 0))),
    lambda: comm._native.allreduce(capsule_on_device(np.ones(4, np.float32), 2), "sum", ""),
):
    comm = Communicator(0, peer_list(1), timeout_s=10)
    try:
        attempt()
        errors.append("no error")
    except ValueError as error:
        errors.append(str(error))
    comm.close()
print("\\n=====\\n".join(errors))
"""


def test_a_cuda_tensor_without_a_cuda_runtime_says_what_is_missing() -> None:
    missing = "/nonexistent/libcudart.so.12"
    done = subprocess.run(
        [sys.executable, "-c", NO_RUNTIME.format(tests=str(Path(__file__).parent))],
        cwd=ROOT,
        env={**os.environ, "COLLECTIVE_CUDART": missing},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    messages = done.stdout.split("=====")
    assert len(messages) == 3, done.stdout
    for message in messages:
        assert "CUDA tensors need the CUDA runtime library (libcudart)" in message, message
        assert missing in message  # what was tried, and why it failed
        assert "COLLECTIVE_CUDART" in message and "host (CPU) tensor" in message


def test_with_a_cuda_runtime_but_no_gpu_a_cuda_tensor_fails_with_the_cuda_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: scripts/gpu_check runs the CUDA path")
    try:
        runtime = _collective._cuda_runtime()
    except ValueError:
        pytest.skip("no libcudart on this machine (the test above covers that)")
    assert "libcudart" in runtime
    with pytest.raises(OSError, match="failed on CUDA device 0: "):
        _collective._cuda_stream(0)
