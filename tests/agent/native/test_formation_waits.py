"""A rank whose peer is not listening yet waits for it without spinning (issue 18, the
cost of formation). Over real sockets: rank 1 starts 2 s after rank 0, so rank 0's
connects to it are refused for 2 s. Rank 0 retries with a backoff and sleeps in between;
on the code before (a refused non-blocking connect was retried on the spot, round after
round), it burned a core for the whole wait, taking the CPU from the very ranks still
starting up when there are more ranks than cores (+8 to +20 ms at 8 ranks on 2 cores)."""

from __future__ import annotations

import time

import numpy as np
from native_ranks import run_ranks

from agent.native import Communicator

LATE_S = 2.0


def _form_with_a_late_peer(rank: int, peers: list[str]) -> tuple[float, float, list[float]]:
    if rank == 1:
        time.sleep(LATE_S)
    began_cpu = time.thread_time()  # the forming thread's own CPU time
    began = time.monotonic()
    comm = Communicator(rank, peers, timeout_s=30)
    cpu = time.thread_time() - began_cpu
    waited = time.monotonic() - began
    x = np.full(4, rank + 1.0)
    comm.allreduce(x, op="sum")
    comm.close()
    return cpu, waited, sorted(set(x.tolist()))


def test_a_rank_waiting_for_a_peer_that_is_not_listening_yet_does_not_spin() -> None:
    results = run_ranks(_form_with_a_late_peer, 2, timeout_s=60)
    cpu, waited, values = results[0]
    assert values == [3.0]
    assert results[1][2] == [3.0]
    assert waited > LATE_S / 2, waited  # it did wait for rank 1
    # Retries at most every COLLECTIVE_CONNECT_RETRY_MS (200 ms): a few milliseconds of
    # CPU in all. Spinning took a whole core (1-2 s here), or on a machine loaded with
    # other work still a share of several hundred milliseconds.
    assert cpu < 0.15, f"rank 0 used {cpu:.3f} s of CPU while waiting {waited:.2f} s"
