"""Asynchronous collectives: a Handle comes back before the call completes, and results keep order.

Two processes. Rank 1 holds back its side of the first allreduce until rank
0 has its handle and has checked that the call is still pending (so the
overlap is shown by causality, not by timing), while rank 0 computes. Then a
mix of async and sync calls submitted in the same order on both ranks, an
error delivered through wait(), and argument errors raised at submission.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from native_ranks import SPAWN, run_ranks

from agent.native import CollectiveError, Communicator, Handle

TIMEOUT_S = 20.0


def _async_ranks(rank: int, peers: list[str], handle_checked: Any) -> dict[str, Any]:
    comm = Communicator(rank, peers, timeout_s=TIMEOUT_S)
    report: dict[str, Any] = {}

    # 1. Overlap: the handle is back, and computation runs, while the peer has not called yet.
    x = np.full(1001, rank + 1.0, dtype=np.float32)
    if rank == 0:
        handle = comm.allreduce_async(x)
        assert isinstance(handle, Handle)
        assert not handle.done()
        with pytest.raises(TimeoutError, match="still running"):
            handle.wait(timeout_s=0.01)
        handle_checked.set()
        product = np.ones((200, 200)) @ np.ones((200, 200))  # computation meanwhile
        assert handle.wait() is x
        assert handle.done()
        report["product"] = float(product[0, 0])
    else:
        handle_checked.wait()
        comm.allreduce(x)
    np.testing.assert_array_equal(x, np.full(1001, 3.0, dtype=np.float32))

    # 2. Order: async calls run in submission order, and a sync call waits for them.
    a = np.arange(10, dtype=np.float64) * (rank + 1)
    b = np.full(7, rank, dtype=np.int64)
    grads = [np.full((3, 3), rank + 1.0, dtype=np.float32), np.full(5, rank + 1, dtype=np.int32)]
    c = np.full(4, float(rank), dtype=np.float64)
    handles = [
        comm.allreduce_async(a, op="max"),
        comm.broadcast_async(b, root=1),
        comm.grouped_allreduce_async(grads),
        comm.allgather_async(np.array([rank, rank * 10])),
    ]
    comm.allreduce(c, op="sum")  # runs after every call above, on both ranks
    assert all(handle.done() for handle in handles)
    np.testing.assert_array_equal(handles[0].wait(), np.arange(10) * 2.0)
    np.testing.assert_array_equal(handles[1].wait(), np.full(7, 1))
    reduced = handles[2].wait()
    assert reduced[0] is grads[0] and reduced[1] is grads[1]
    np.testing.assert_array_equal(grads[0], np.full((3, 3), 3.0))
    np.testing.assert_array_equal(grads[1], np.full(5, 3))
    np.testing.assert_array_equal(handles[3].wait(), [[0, 0], [1, 10]])
    np.testing.assert_array_equal(c, np.full(4, 1.0))

    # 3. Bad arguments raise at submission, before anything is queued.
    with pytest.raises(ValueError, match="mean"):
        comm.allreduce_async(np.ones(3, dtype=np.int32), op="mean")
    with pytest.raises(ValueError, match="root"):
        comm.broadcast_async(np.ones(3), root=5)
    comm.barrier()

    # 4. A failure comes out of wait(): rank 1 leaves, rank 0's next call fails.
    if rank == 1:
        comm.close()
        return report
    failing = comm.allreduce_async(np.ones(1 << 16, dtype=np.float32))
    try:
        failing.wait(timeout_s=TIMEOUT_S * 2)
    except CollectiveError as error:
        report["error"] = str(error)
    assert comm.closed
    late = comm.allreduce_async(np.ones(3))  # on a closed communicator: fails at once
    with pytest.raises(CollectiveError, match="closed"):
        late.wait()
    comm.close()
    return report


def test_async_calls_return_handles_at_once_and_complete_in_submission_order() -> None:
    handle_checked = SPAWN.Event()
    results = run_ranks(_async_ranks, 2, handle_checked, timeout_s=60)
    assert results[0]["product"] == 200.0
    assert "allreduce on rank 0" in results[0]["error"]


def test_single_rank_async_calls_finish_and_close_ends_the_thread() -> None:
    comm = Communicator(0, ["127.0.0.1:1"], timeout_s=1)
    x = np.arange(5.0)
    handle = comm.allreduce_async(x, op="mean")
    assert handle.wait(timeout_s=5) is x
    assert "done" in repr(handle)
    comm.close()
    assert comm._calls is None  # the background thread was stopped
