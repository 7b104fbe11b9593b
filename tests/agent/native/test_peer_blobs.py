"""Peer-to-peer blobs: a rank fetches another's published array without that rank making a call.

Three processes over real sockets. Rank 0 owns the blobs and is, in turn,
busy in pure Python (holding the GIL), blocked in a collective, and idle,
while ranks 1 and 2 request its blobs; each answer must be the latest
published copy. Then the error cases: a wrong dtype or size, an unknown name
(ValueError naming blob and peer, connection still usable), and a peer that
has closed its communicator (CollectiveError), and one that is frozen
(SIGSTOP: CollectiveTimeout, then a later request succeeds). Requests run in
threads beside a large allreduce on the same communicator, which neither
blocks.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest
from native_ranks import SPAWN, run_ranks

from agent.native import CollectiveError, CollectiveTimeout, Communicator

TIMEOUT_S = 20.0
BIG = (8 << 20) // 4  # an 8 MiB model


def model(rank: int, version: int) -> np.ndarray:
    return np.arange(BIG, dtype=np.float32) + 1000 * rank + version


def _expect_value_error(call: Any, *fragments: str) -> str:
    try:
        call()
    except ValueError as error:
        message = str(error)
        for fragment in fragments:
            assert fragment in message, message
        return message
    raise AssertionError("no ValueError")


def _blob_ranks(rank: int, peers: list[str]) -> dict[str, Any]:
    comm = Communicator(rank, peers, timeout_s=TIMEOUT_S)
    report: dict[str, Any] = {}
    out = np.empty(BIG, dtype=np.float32)
    weights = np.empty((3, 4), dtype=np.float64)

    # Every rank publishes; rank 0's "model" is what the others pull.
    assert comm.publish("model", model(rank, 1)) == 1
    assert comm.publish("weights", np.full((3, 4), float(rank))) == 1
    comm.barrier()

    # 1. Rank 0 busy in pure Python, holding the GIL: its server thread answers.
    if rank == 0:
        started = time.monotonic()
        spins = 0
        while time.monotonic() - started < 1.0:
            spins += 1
    else:
        comm.request(0, "model", out)
        np.testing.assert_array_equal(out, model(0, 1))
    comm.barrier()

    # 2. Rank 0 blocked in a collective (a barrier rank 2 enters late): rank 1 pulls meanwhile.
    if rank == 0:
        assert comm.publish("model", model(0, 2)) == 2
        comm.barrier()
    elif rank == 1:
        comm.barrier()  # rank 0 is waiting in the barrier; its version 2 is published
    else:
        time.sleep(0.2)  # let rank 0 publish and reach the barrier
        latest = model(0, 2)
        deadline = time.monotonic() + TIMEOUT_S
        while not np.array_equal(comm.request(0, "model", out), latest):
            np.testing.assert_array_equal(out, model(0, 1))  # the previous copy, whole
            assert time.monotonic() < deadline, "version 2 never arrived"
        comm.barrier()
    comm.barrier()

    # 3. Idle owner; any shape of the same size and dtype; this rank's own blobs; neighbours.
    comm.request(0, "weights", weights.reshape(12))
    np.testing.assert_array_equal(weights, np.zeros((3, 4)))
    comm.request(rank, "weights", weights)
    np.testing.assert_array_equal(weights, np.full((3, 4), float(rank)))
    comm.request((rank + 1) % 3, "weights", weights)
    np.testing.assert_array_equal(weights, np.full((3, 4), float((rank + 1) % 3)))

    # 4. Mismatches: ValueError naming blob and peer; the connection stays usable.
    peer = (rank + 1) % 3
    report["dtype"] = _expect_value_error(
        lambda: comm.request(peer, "weights", np.empty(12, dtype=np.float32)),
        'blob "weights"',
        f"rank {peer}",
        "12 float64 elements",
    )
    report["size"] = _expect_value_error(
        lambda: comm.request(peer, "weights", np.empty(13)), "13 float64", f"rank {peer}"
    )
    report["unknown"] = _expect_value_error(
        lambda: comm.request(peer, "optimizer", np.empty(1)), 'blob "optimizer"', "does not exist"
    )
    _expect_value_error(lambda: comm.request(rank, "nothing", np.empty(1)), "does not exist")
    _expect_value_error(lambda: comm.request(3, "weights", weights), "peer 3 is out of range")
    _expect_value_error(lambda: comm.request(peer, "", weights), "blob name")
    _expect_value_error(lambda: comm.publish("x", np.empty(3, dtype=np.uint8)), "publish supports")
    comm.request(peer, "weights", weights)  # still fine after the errors
    assert not comm.closed

    # 5. Requests in threads beside a large allreduce on the same communicator.
    gradient = np.ones(BIG, dtype=np.float32)
    pulled: list[np.ndarray] = []

    def pull() -> None:
        for _ in range(3):
            target = np.empty((3, 4))
            comm.request((rank + 2) % 3, "weights", target)
            pulled.append(target)

    threads = [threading.Thread(target=pull) for _ in range(2)]
    for thread in threads:
        thread.start()
    comm.allreduce(gradient)
    for thread in threads:
        thread.join()
    np.testing.assert_array_equal(gradient, np.full(BIG, 3.0, dtype=np.float32))
    assert len(pulled) == 6
    for target in pulled:
        np.testing.assert_array_equal(target, np.full((3, 4), float((rank + 2) % 3)))
    comm.barrier()

    # 6. Rank 2 closes (with rank 0 and 1 connected to its blob service):
    #    close returns, and requests to it then fail with CollectiveError.
    if rank == 2:
        comm.close()
        try:
            comm.publish("model", model(2, 2))
        except CollectiveError as error:
            report["publish_after_close"] = str(error)
        return report
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            comm.request(2, "weights", weights)
        except CollectiveError as error:
            report["gone"] = (type(error).__name__, str(error))
            break
        time.sleep(0.05)
    comm.close()
    return report


def test_blobs_are_served_while_the_owner_is_busy_blocked_or_idle_and_errors_name_the_blob() -> (
    None
):
    results = run_ranks(_blob_ranks, 3, timeout_s=90)
    assert sorted(results) == [0, 1, 2]
    for rank in (0, 1):
        kind, message = results[rank]["gone"]
        assert kind in ("CollectiveError", "CollectiveTimeout")
        assert 'request of blob "weights" from rank 2' in message
    assert "closed" in results[2]["publish_after_close"]
    assert "holds 12 float64 elements but `out` has 12 float32" in results[0]["dtype"]


def test_single_rank_serves_its_own_blobs() -> None:
    with Communicator(0, ["127.0.0.1:1"], timeout_s=1) as comm:
        assert comm.publish("w", np.arange(4.0)) == 1
        assert comm.publish("w", np.arange(4.0)[::-1]) == 2  # not contiguous: copied
        out = comm.request(0, "w", np.empty(4))
        np.testing.assert_array_equal(out, [3.0, 2.0, 1.0, 0.0])
        readonly = np.arange(3, dtype=np.int64)
        readonly.flags.writeable = False
        comm.publish("r", readonly)
        with pytest.raises(ValueError, match="writeable"):
            comm.request(0, "r", readonly)
    with pytest.raises(CollectiveError, match="closed"):
        comm.request(0, "w", np.empty(4))


def _wait_until_stopped(pid: int) -> None:
    """SIGSTOP takes effect asynchronously: wait until every thread of ``pid`` is stopped."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/stat") as stat:
                states.append(stat.read().rsplit(")", 1)[1].split()[0])
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop")


def _stalled_owner(rank: int, peers: list[str], released: Any) -> dict[str, Any]:
    comm = Communicator(rank, peers, timeout_s=TIMEOUT_S)
    comm.publish("w", np.full(5, float(rank)))
    pids = comm.allgather(np.array([os.getpid()]))
    report: dict[str, Any] = {}
    if rank == 1:
        released.wait()  # frozen by rank 0 meanwhile (SIGSTOP): no collective may run
    else:
        out = np.empty(5)
        comm.request(1, "w", out, timeout_s=1.0)  # connected, answered
        os.kill(int(pids[1, 0]), signal.SIGSTOP)
        _wait_until_stopped(int(pids[1, 0]))
        try:
            comm.request(1, "w", out, timeout_s=0.5)
        except CollectiveTimeout as error:
            report["stalled"] = str(error)
        finally:
            os.kill(int(pids[1, 0]), signal.SIGCONT)
        np.testing.assert_array_equal(comm.request(1, "w", out), np.full(5, 1.0))  # reconnects
        assert not comm.closed
        released.set()
    comm.barrier()
    comm.close()
    return report


def test_a_stalled_owner_makes_the_request_time_out_and_a_later_one_succeed() -> None:
    results = run_ranks(_stalled_owner, 2, SPAWN.Event(), timeout_s=60)
    message = results[0]["stalled"]
    assert 'request of blob "w" from rank 1 on rank 0 of 2' in message
    assert "0.5 s timeout" in message
