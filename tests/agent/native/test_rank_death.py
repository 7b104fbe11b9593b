"""A rank killed in the middle of an allreduce makes every other rank fail within the timeout.

For each algorithm, one of three ranks SIGKILLs itself while large
allreduces are in flight (no close, no goodbye: like a crash or an OOM kill).
The survivors must raise CollectiveError naming the operation, within the
communicator's timeout, and report how long it took; their communicators
are closed afterwards. Run over shared memory and over TCP
(COLLECTIVE_LOCAL_TRANSPORT): on shared memory the pair's TCP connection is
what tells the survivors, since the kernel closes it.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from native_ranks import run_ranks

from agent.native import CollectiveError, Communicator

TIMEOUT_S = 4.0
COUNT = (4 << 20) // 4  # 4 MiB of float32: each call takes a while, so the kill lands mid-call


def _killed_mid_allreduce(
    rank: int, peers: list[str], algorithm: str, victim: int
) -> tuple[str, str, float, int]:
    comm = Communicator(rank, peers, timeout_s=TIMEOUT_S, algorithm=algorithm)
    x = np.ones(COUNT, dtype=np.float32)
    comm.allreduce(x)  # everyone is connected and in step
    if rank == victim:
        threading.Timer(0.05, os.kill, args=(os.getpid(), signal.SIGKILL)).start()
    calls = 0
    while True:
        started = time.monotonic()
        try:
            comm.allreduce(x)
        except CollectiveError as error:
            assert comm.closed
            return type(error).__name__, str(error), time.monotonic() - started, calls
        calls += 1
        if calls > 10_000:
            raise AssertionError("allreduce kept working after a rank was killed")


@pytest.mark.parametrize("local_transport", ["shm", "tcp"])
@pytest.mark.parametrize("algorithm", ["ring", "tree", "star"])
@pytest.mark.parametrize("victim", [0, 2], ids=["root-dies", "leaf-dies"])
def test_killed_rank_makes_every_survivor_fail_within_the_timeout(
    algorithm: str, victim: int, local_transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTIVE_LOCAL_TRANSPORT", local_transport)
    results = run_ranks(_killed_mid_allreduce, 3, algorithm, victim, timeout_s=60)
    survivors = sorted(set(range(3)) - {victim})
    assert sorted(results) == survivors
    for rank in survivors:
        kind, message, elapsed, calls = results[rank]
        assert kind in ("CollectiveError", "CollectiveTimeout"), message
        assert f"allreduce on rank {rank}" in message
        assert "rank" in message.split(":", 1)[1], "the message names the peer"
        # Detection time, for the record (pytest -rA shows it): a crash
        # closes the sockets, so it is normally milliseconds, never more
        # than the timeout.
        print(
            f"{algorithm}/{local_transport}: rank {rank} failed {elapsed * 1000:.0f} ms into the call: {kind}"
        )
        assert elapsed < TIMEOUT_S + 1.0
