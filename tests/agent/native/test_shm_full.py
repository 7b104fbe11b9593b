"""/dev/shm too small for the shared-memory rings: with COLLECTIVE_LOCAL_TRANSPORT=auto
(the default) the pairs fall back to TCP and the collectives are still right; with
=shm every rank fails with an error that says /dev/shm is full and how to fall back.

Each scenario runs in a private mount namespace (``unshare -m``) whose /dev/shm is a
64 KiB tmpfs, so the rest of the machine is untouched; the ranks the scenario spawns
inherit that namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]

SCENARIO = r"""
import json, sys
sys.path.insert(0, {here!r})
from native_ranks import run_ranks
from test_shm_full import _allreduce
print("RESULT " + json.dumps(run_ranks(_allreduce, 2, timeout_s=60)), flush=True)
"""


def _allreduce(rank: int, peers: list[str]) -> dict:
    from agent.native import CollectiveError, Communicator

    try:
        with Communicator(rank, peers, timeout_s=20) as comm:
            data = np.arange(300_001, dtype=np.float32) * (rank + 1)
            comm.allreduce(data, op="sum")
            expected = np.arange(300_001, dtype=np.float32) * 3
            return {"links": list(comm.links), "right": bool(np.array_equal(data, expected))}
    except (CollectiveError, RuntimeError, OSError) as error:
        return {"error": f"{type(error).__name__}: {error}"}


def _can_make_a_private_shm() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /dev/shm"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_namespace = pytest.mark.skipif(
    not _can_make_a_private_shm(),
    reason="needs `unshare -m` and mount rights (root) to give the test a tiny /dev/shm",
)


def run_with_tiny_shm(mode: str) -> dict:
    script = SCENARIO.format(here=str(Path(__file__).parent))
    env = {**os.environ, "COLLECTIVE_LOCAL_TRANSPORT": mode, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount -t tmpfs -o size=64k tmpfs /dev/shm && exec "$0" -c "$1"',
            sys.executable,
            script,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return {int(rank): value for rank, value in json.loads(lines[-1][len("RESULT ") :]).items()}


@needs_namespace
def test_auto_falls_back_to_tcp_when_dev_shm_is_full() -> None:
    results = run_with_tiny_shm("auto")
    for rank in (0, 1):
        assert "error" not in results[rank], results[rank]
        assert results[rank]["right"]
    assert results[0]["links"] == ["self", "tcp"] and results[1]["links"] == ["tcp", "self"]


@needs_namespace
def test_shm_insisted_on_fails_on_every_rank_naming_dev_shm() -> None:
    results = run_with_tiny_shm("shm")
    for rank in (0, 1):
        message = results[rank].get("error", "")
        assert "/dev/shm full" in message and "COLLECTIVE_LOCAL_TRANSPORT" in message, results[rank]
