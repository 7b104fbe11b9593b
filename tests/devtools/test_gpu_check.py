"""scripts/gpu_check on a machine without a GPU (this one): every line it prints is JSON,
it says there is no usable GPU, skips the GPU steps, still checks the native library and
the discovery, and ends cleanly (status 0) well within its five minutes. Its GPU path runs
on a GPU machine only (docs/agent-install.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_gpu_it_says_so_and_ends_cleanly(tmp_path):
    # No nvidia-smi, no CUDA device, whatever the machine: an empty mask hides any GPU.
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "CUDA_VISIBLE_DEVICES": "",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    by = {line["check"]: line for line in lines}
    assert [line["check"] for line in lines] == [
        "environment", "gpu", "native_build", "discovery", "allreduce", "train", "summary",
    ]  # fmt: skip
    assert by["gpu"]["ok"] is False and "no usable CUDA GPU" in by["gpu"]["error"]
    assert by["native_build"]["ok"] is True
    assert by["discovery"]["ok"] is True and by["discovery"]["gpus"] == []
    assert by["allreduce"]["ok"] is None and by["allreduce"]["skipped"] == "no usable CUDA GPU"
    assert by["train"]["ok"] is None
    summary = by["summary"]
    assert summary["ok"] is True and summary["gpu"] is False and summary["failed"] == []
    assert summary["elapsed_s"] < 240


def test_a_build_without_nanobind_is_a_clear_error_line(tmp_path):
    """The build step's own failure, as on an air-gapped machine without nanobind: one line
    that says what to bring."""
    from devtools import gpu_check

    missing = tmp_path / "nanobind-missing"
    missing.mkdir()
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def no_nanobind(name, *a, **k):\n"
        "    if name == 'nanobind': raise ImportError('No module named nanobind')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = no_nanobind\n"
        "from devtools import gpu_check\n"
        "gpu_check.BUILD_DIR = __import__('pathlib').Path(sys.argv[1])\n"
        "gpu_check.check_native(True, None, gpu_check.time.monotonic() + 30)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "build")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    (line,) = [json.loads(x) for x in done.stdout.splitlines()]
    assert line["check"] == "native_build" and line["ok"] is False
    assert "--nanobind" in line["error"] and "pip download nanobind" in line["error"]
    assert gpu_check.SIZES_MIB[1] == 4  # the goal's size (busbw at 4 MiB) is measured


def test_the_allreduce_step_compares_the_librarys_device_buffers_with_host_buffers():
    """The allreduce step's own code, on CPU tensors in place of CUDA ones (no GPU here:
    the library's rows then take its host DLPack path, not the CUDA staging): two
    processes, each size once per kind, correct sums, ratios against host buffers."""
    done = subprocess.run(
        [sys.executable, "-m", "devtools.gpu_check", "--allreduce-on-cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    rows = [line for line in lines if line["check"] == "allreduce"]
    assert [(r["mib"], r["kind"]) for r in rows] == [
        (mib, kind) for mib in (1, 4, 16, 64) for kind in ("cuda_library", "cuda_staged_in_python")
    ]
    for row in rows:
        assert row["ok"] is True and row["np"] == 2, row
        assert row["busbw_gbs"] > 0 and row["host_busbw_gbs"] > 0
        # (the ratio of the unrounded figures)
        ratio = row["busbw_gbs"] / row["host_busbw_gbs"]
        assert row["ratio_to_host"] == pytest.approx(ratio, rel=0.05, abs=0.002)
        assert "goal_met" not in row  # the goal is about CUDA buffers, measured on a GPU
