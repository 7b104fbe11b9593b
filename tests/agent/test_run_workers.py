"""agent.local.run_workers, the runner that tests and benchmarks use: it reads every
worker's output at once and stops the rest when one fails."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.local import job_series, run_workers

MODULE = "tests.support.run_workers_worker"


def test_a_worker_writing_more_than_a_pipe_holds_does_not_stall_the_others(monkeypatch):
    # Read one after another, rank 1 would block on a full pipe while rank 0 waits for
    # it in the barrier, and the barrier would time out.
    monkeypatch.setenv("COLLECTIVE_TIMEOUT", "20")
    messages = run_workers(2, {"mode": "chatty"}, module=MODULE, timeout_s=120)
    chatter = {
        p["step"]: p["value"]
        for m in messages[1]
        if m["type"] == "metrics"
        for p in m["points"]
        if p["name"] == "chatter"
    }
    assert chatter == {i: float(i) for i in range(4000)}
    assert not job_series(messages[0], "chatter")


def test_the_first_failure_is_reported_and_the_other_workers_are_stopped():
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"worker 0 exited with 3:\n.*rank 0 gives up"):
        run_workers(2, {"mode": "rank0_fails"}, module=MODULE, timeout_s=300)
    # Rank 1 would sleep for 600 s: run_workers returned because it killed it, and left
    # no worker behind.
    assert time.monotonic() - started < 120
    assert not workers_running()


def workers_running() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and MODULE.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:  # ended while we looked
            pass
    return found
