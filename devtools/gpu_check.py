"""A prepared check of a GPU machine, run as ``scripts/gpu_check``: everything a GPU node
needs from this repository, measured in one go and printed as JSON lines.

Made for an air-gapped machine whose Python has PyTorch, CuPy, NVML (``nvidia-ml-py``) and
NCCL but not TensorFlow, and no network: it installs nothing and brings nothing but this
source tree (plus, where nanobind is not installed, a nanobind wheel of ~0.3 MiB passed as
``--nanobind``). In order, each step one or more lines ``{"check": ..., "ok": ...}``:

1. ``environment``: Python, PyTorch (CUDA, device, NCCL version), CuPy, NVML, cmake, nvcc;
2. ``gpu``: whether a CUDA GPU is usable; without one the GPU steps say ``skipped`` and
   the check ends cleanly (exit status 0);
3. ``native_build``: the collective library: imported as it is when built for this
   Python, else built with cmake from ``agent/native`` (needs cmake, a C++17 compiler,
   Python's headers and nanobind) into ``build/gpu_check`` and put beside its package;
4. ``discovery``: the agent's GPU discovery (:mod:`agent.daemon.gpus`): what it finds, the
   node labels it makes, one sample of each GPU's load;
5. ``allreduce``: two processes on the one GPU (``np 2``) allreduce the same sizes from
   host buffers (NumPy), from CUDA buffers handed to the library as they are
   (``cuda_library``: PyTorch tensors through DLPack, staged by the library through
   pinned host memory in chunks pipelined with the ring; the goal is a busbw of at least
   85 % of host buffers' at 4 MiB and up) and, for comparison, from CUDA buffers copied
   through a pinned buffer in Python (``cuda_staged_in_python``): the bus bandwidth of
   each, its ratio to host buffers', median of repeats;
6. ``train``: ``examples.synthetic_cnn_torch`` on the GPU as two local workers, when the
   tree has it;
7. ``summary``: which steps passed, and the time taken.

A step that fails says why in its line (``error``) and the next steps go on where they
can. Sized to finish in about five minutes on one GPU (``--deadline-s``); exit status 0
when every step that ran passed (skipped steps do not count; on a machine without a GPU
the summary says ``"gpu": false``), 1 otherwise.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "gpu_check"
SIZES_MIB = (1, 4, 16, 64)
REPEATS = 10
TRAIN_MODULE = "examples.synthetic_cnn_torch.train"
# Issue 16's goal for the library's staged CUDA allreduce, against host buffers.
GOAL_RATIO = 0.85
GOAL_MIN_MIB = 4

_results: dict[str, bool | None] = {}  # step -> ok (None: skipped)
_started = time.monotonic()


def emit(check: str, ok: bool | None, **fields: Any) -> None:
    """One JSON line; ``ok`` None is a skipped step."""
    line: dict[str, Any] = {"check": check, "ok": ok}
    if ok is None:
        line["skipped"] = fields.pop("reason", "")
    line.update(fields)
    line["elapsed_s"] = round(time.monotonic() - _started, 2)
    print(json.dumps(line, default=str), flush=True)
    if check not in _results or ok is False:
        _results[check] = ok


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()[:2000]


# -- 1. environment ------------------------------------------------------------------------
def check_environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cmake": shutil.which("cmake"),
        "nvcc": shutil.which("nvcc"),
        "nvidia_smi": shutil.which("nvidia-smi"),
    }
    # Versions from the installed distributions: importing TensorFlow alone takes a minute.
    for name, distributions in {
        "numpy": ("numpy",),
        "torch": ("torch",),
        "cupy": ("cupy", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x"),
        "pynvml": ("nvidia-ml-py", "pynvml"),
        "nanobind": ("nanobind",),
        "tensorflow": ("tensorflow", "tensorflow-cpu"),
    }.items():
        info[name] = None
        for distribution in distributions:
            try:
                info[name] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    torch = _torch()
    if torch is not None:
        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            info["devices"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
            try:
                info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
            except Exception as exc:
                info["nccl"] = f"unknown ({_one_line(exc)})"
    emit("environment", True, **info)
    return info


def _torch() -> Any:
    try:
        import torch  # type: ignore[import-not-found]
    except Exception:
        return None
    return torch


# -- 2. is there a GPU? ----------------------------------------------------------------------
def check_gpu(info: dict[str, Any]) -> bool:
    if info.get("cuda_available"):
        emit("gpu", True, devices=info.get("devices"))
        return True
    why = (
        "PyTorch is not installed"
        if info.get("torch") is None
        else "PyTorch sees no CUDA device (torch.cuda.is_available() is False)"
    )
    devices = sorted(glob.glob("/dev/nvidia[0-9]*"))
    emit(
        "gpu",
        False,
        error=f"no usable CUDA GPU: {why}; device files: {devices or 'none'}. The GPU steps "
        "are skipped.",
    )
    return False


# -- 3. the native library -----------------------------------------------------------------
def _import_native() -> str:
    """The extension's file, after a fresh import (raises ImportError)."""
    for name in [m for m in sys.modules if m.startswith("agent.native")]:
        del sys.modules[name]
    module = importlib.import_module("agent.native._collective")
    return str(module.__file__)


def _nanobind_dir(wheel: str | None) -> str:
    """nanobind's CMake directory: from an installed nanobind, else from ``wheel`` (a
    nanobind wheel file or an unpacked one), which needs nothing installed."""
    if wheel:
        path = Path(wheel)
        if path.is_file():
            target = Path(tempfile.mkdtemp(prefix="nanobind-"))
            with zipfile.ZipFile(path) as archive:
                archive.extractall(target)
            path = target
        sys.path.insert(0, str(path))
    try:
        import nanobind  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError(
            "nanobind is not installed and no --nanobind was given: copy a nanobind wheel "
            "(pip download nanobind --no-deps, about 0.3 MiB, on a machine with a network) "
            "and pass --nanobind path/to/nanobind-*.whl"
        ) from None
    return str(nanobind.cmake_dir())


def check_native(rebuild: bool, nanobind_wheel: str | None, deadline: float) -> bool:
    if not rebuild:
        try:
            emit("native_build", True, built=False, module=_import_native())
            return True
        except ImportError as exc:
            reason = _one_line(exc)
    else:
        reason = "--rebuild"
    cmake = shutil.which("cmake")
    if cmake is None:
        emit("native_build", False, error=f"cannot import the library ({reason}) and no cmake")
        return False
    try:
        cmake_dir = _nanobind_dir(nanobind_wheel)
        configure = [
            cmake,
            "-S",
            str(ROOT / "agent" / "native"),
            "-B",
            str(BUILD_DIR),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dnanobind_DIR={cmake_dir}",
        ]
        build = [cmake, "--build", str(BUILD_DIR), "-j", str(os.cpu_count() or 2)]
        for argv in (configure, build):
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=max(10.0, deadline - time.monotonic()),
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(argv[:2])} failed ({done.returncode}): "
                    f"{(done.stderr or done.stdout)[-1500:]}"
                )
        (built,) = BUILD_DIR.glob("_collective*.so")
        target = ROOT / "agent" / "native" / built.name
        shutil.copy2(built, target)
        module = _import_native()
        extra = {}
        if Path(module).resolve() != target.resolve():
            # An installed adaptrain (an editable install) comes first on sys.path.
            extra["note"] = f"built {target}, but this Python imports {module}"
        emit(
            "native_build",
            True,
            built=True,
            because=reason,
            seconds=round(time.monotonic() - _started, 1),
            module=module,
            **extra,
        )
        return True
    except Exception as exc:
        emit("native_build", False, error=_one_line(exc), because=reason)
        return False


# -- 4. discovery ----------------------------------------------------------------------------
def check_discovery() -> None:
    from agent.daemon import gpus

    try:
        inventory = gpus.discover()
        samples = gpus.sample(inventory)
        emit(
            "discovery",
            not inventory.warnings,  # finding none is right on a machine without a GPU
            **inventory.to_dict(),
            labels=inventory.labels(),
            samples=[s.to_dict() for s in samples],
        )
    except Exception as exc:
        emit("discovery", False, error=_one_line(exc))


# -- 5. allreduce: host buffers vs CUDA buffers, two processes on one GPU -------------------
def _busbw(nbytes: int, seconds: float, ranks: int = 2) -> float:
    """Bus bandwidth in GB/s as nccl-tests define it for allreduce: 2(n-1)/n · bytes / t."""
    return 2 * (ranks - 1) / ranks * nbytes / seconds / 1e9


def allreduce_worker(
    rank: int, peers: list[str], sizes: list[int], repeats: int, device_kind: str = "cuda"
) -> None:
    """One of the two processes: prints one JSON object per size and kind (rank 0).
    ``device_kind`` "cpu" runs the same code on CPU tensors (this script's own test)."""
    import numpy as np
    import torch  # type: ignore[import-not-found]

    from agent.native import Communicator

    on_gpu = device_kind == "cuda"
    if on_gpu:
        torch.cuda.set_device(0)

    def synchronize() -> None:
        if on_gpu:
            torch.cuda.current_stream().synchronize()

    from agent.native import _collective

    comm = Communicator(rank, peers, timeout_s=60)

    def run_host(host: Any, device: Any, pinned: Any) -> None:
        comm.allreduce(host, op="sum")

    def run_staged(host: Any, device: Any, pinned: Any) -> None:
        pinned.copy_(device, non_blocking=True)
        synchronize()
        comm.allreduce(pinned.numpy(), op="sum")
        device.copy_(pinned, non_blocking=True)
        synchronize()

    def run_library(host: Any, device: Any, pinned: Any) -> None:
        # The library takes the CUDA tensor itself (DLPack) and returns once the sums are
        # back in device memory: nothing to synchronise.
        comm.allreduce(device, op="sum")

    # The library's kind last: if it fails it may close the communicator.
    kinds = {
        "host": run_host,
        "cuda_staged_in_python": run_staged,
        "cuda_library": run_library,
    }
    for kind, call in kinds.items():
        for mib in sizes:
            count = mib * (1 << 20) // 4
            host = np.ones(count, dtype=np.float32)
            device = torch.ones(count, dtype=torch.float32, device=device_kind)
            pinned = torch.empty(count, dtype=torch.float32, pin_memory=on_gpu)
            row: dict[str, Any] = {"kind": kind, "mib": mib}
            try:
                call(host, device, pinned)  # warm-up (and the value check below)
                synchronize()
                result = host if kind == "host" else device.cpu().numpy()
                row["correct"] = bool((result == 2.0).all())
                times = []
                for _ in range(repeats):
                    host.fill(1)
                    device.fill_(1)
                    synchronize()
                    comm.barrier()
                    start = time.perf_counter()
                    call(host, device, pinned)
                    times.append(time.perf_counter() - start)
                median = statistics.median(times)
                row.update(median_s=median, busbw_gbs=_busbw(count * 4, median))
                if kind == "cuda_library" and on_gpu:
                    row["chunk_bytes"] = _collective._staging_chunk_bytes(count * 4, 4)
                    row["cudart"] = _collective._cuda_runtime()
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:1500]
            if rank == 0 or "error" in row:
                print(json.dumps(row), flush=True)
            if "error" in row:
                comm.close()
                return
    comm.close()


def check_allreduce(deadline: float, device_kind: str = "cuda") -> None:
    from agent.local import peer_list

    peers = peer_list(2)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [sys.executable, "-m", "devtools.gpu_check", "--allreduce-worker"]
    args = ["--peers", ",".join(peers), "--repeats", str(REPEATS), "--device", device_kind]
    procs = [
        subprocess.Popen(
            [*argv, str(rank), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        outs = [p.communicate(timeout=max(10.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        emit("allreduce", False, error="the two allreduce processes did not finish in time")
        return
    failed = [(r, p.returncode, outs[r][1]) for r, p in enumerate(procs) if p.returncode != 0]
    if failed:
        rank, code, err = failed[0]
        emit("allreduce", False, error=f"rank {rank} exited with {code}: {err[-1500:]}")
        return
    rows = [json.loads(line) for out, _ in outs for line in out.splitlines() if line[:1] == "{"]
    for row in rows:
        if "error" in row:  # one line per failure (a failing rank prints its own)
            emit("allreduce", False, np=2, mib=row["mib"], kind=row["kind"], error=row["error"])
    by = {(r["kind"], r["mib"]): r for r in rows if "error" not in r}
    for mib in SIZES_MIB:
        host = by.get(("host", mib))
        for kind in ("cuda_library", "cuda_staged_in_python"):
            row = by.get((kind, mib))
            if row is None or host is None:
                continue
            ratio = row["busbw_gbs"] / host["busbw_gbs"]
            extra: dict[str, Any] = {}
            if kind == "cuda_library" and device_kind == "cuda":
                extra = {"chunk_bytes": row.get("chunk_bytes"), "cudart": row.get("cudart")}
                if mib >= GOAL_MIN_MIB:
                    extra["goal"] = f"ratio_to_host >= {GOAL_RATIO}"
                    extra["goal_met"] = ratio >= GOAL_RATIO
            emit(
                "allreduce",
                bool(row["correct"] and host["correct"]),
                np=2,
                mib=mib,
                kind=kind,
                # 4 significant digits: a loaded machine's busbw can be a few MB/s, which
                # 3 decimals of GB/s would round to nothing.
                busbw_gbs=float(f"{row['busbw_gbs']:.4g}"),
                host_busbw_gbs=float(f"{host['busbw_gbs']:.4g}"),
                ratio_to_host=float(f"{ratio:.4g}"),
                median_s=row["median_s"],
                repeats=REPEATS,
                **extra,
            )


# -- 6. training -----------------------------------------------------------------------------
def check_train(deadline: float) -> None:
    if importlib.util.find_spec(TRAIN_MODULE.rsplit(".", 1)[0]) is None:
        emit("train", None, reason=f"{TRAIN_MODULE} is not in this tree")
        return
    from agent.local import job_series, run_workers

    hp = {"batch_size": 128, "lr": 0.01, "steps": 200, "log_every": 20, "device": "cuda"}
    start = time.monotonic()
    try:
        messages = run_workers(
            2, hp, module=TRAIN_MODULE, timeout_s=max(10.0, deadline - time.monotonic())
        )
    except Exception as exc:
        emit("train", False, module=TRAIN_MODULE, error=_one_line(exc))
        return
    loss = job_series(messages[0], "loss")
    throughput = job_series(messages[0], "throughput")
    steps = sorted(loss)
    emit(
        "train",
        bool(steps) and loss[steps[-1]] < loss[steps[0]],
        module=TRAIN_MODULE,
        workers=2,
        hyperparameters=hp,
        first_loss=loss[steps[0]] if steps else None,
        last_loss=loss[steps[-1]] if steps else None,
        throughput_samples_s=statistics.median(throughput.values()) if throughput else None,
        seconds=round(time.monotonic() - start, 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rebuild", action="store_true", help="build the library even if it imports"
    )
    parser.add_argument(
        "--nanobind", help="a nanobind wheel (or unpacked one) when none is installed"
    )
    parser.add_argument("--deadline-s", type=float, default=280.0, help="time for all steps")
    parser.add_argument("--allreduce-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--peers", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=REPEATS, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    # The allreduce step on CPU tensors, without a GPU: for this script's own test.
    parser.add_argument("--allreduce-on-cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.allreduce_worker is not None:
        allreduce_worker(
            args.allreduce_worker, args.peers.split(","), list(SIZES_MIB), args.repeats, args.device
        )
        return 0
    if args.allreduce_on_cpu:
        check_allreduce(_started + args.deadline_s, device_kind="cpu")
        return 0 if all(ok is not False for ok in _results.values()) else 1
    deadline = _started + args.deadline_s
    try:
        info = check_environment()
        has_gpu = check_gpu(info)
        native = check_native(args.rebuild, args.nanobind, deadline)
        check_discovery()
        if not has_gpu:
            for step in ("allreduce", "train"):
                emit(step, None, reason="no usable CUDA GPU")
        else:
            if native:
                check_allreduce(deadline - 90)  # leave time for training
            else:
                emit("allreduce", None, reason="the collective library is not available")
            check_train(deadline)
    except Exception as exc:  # a bug in this script: one clear line, not a traceback
        emit("internal", False, error=_one_line(exc), traceback=traceback.format_exc()[-2000:])
    # No GPU is what the gpu line says, not a failed step: the check then ends cleanly.
    ran = {step: ok for step, ok in _results.items() if ok is not None and step != "gpu"}
    emit(
        "summary",
        all(ran.values()),
        gpu=bool(_results.get("gpu")),
        passed=sorted(s for s, ok in ran.items() if ok),
        failed=sorted(s for s, ok in ran.items() if not ok),
        skipped=sorted(s for s, ok in _results.items() if ok is None),
    )
    return 0 if all(ran.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
