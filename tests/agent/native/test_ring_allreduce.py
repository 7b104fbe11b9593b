"""Ring allreduce and barrier of agent.native across real processes and real loopback sockets.

Each test starts one spawned process per rank, hands them free ports picked by
binding port 0, and collects what every rank returned (or the traceback it
raised) through a queue, so a failure on any rank shows up in the test report.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import numpy as np
import pytest
from native_ranks import run_ranks

from agent.native import CollectiveError, CollectiveTimeout, Communicator

OPS = ("sum", "mean", "min", "max")
SIXTEEN_MIB = (16 << 20) // 4
# 1001 = 7 * 11 * 13 is divisible by none of 2, 3, 4; 7 is smaller than nothing
# but larger than n, 1 is smaller than n (empty segments).
SIZES = (0, 1, 7, 1000, 1001, SIXTEEN_MIB)


def inputs_for(count: int, size: int) -> np.ndarray:
    """Every rank's input, identical in every process: row r belongs to rank r."""
    rng = np.random.default_rng(count)
    return rng.random((size, count), dtype=np.float32) * 2 - 1


# --- rank bodies (module level so that spawn can import them) --------------


def _allreduce_every_op_and_size(rank: int, peers: list[str]) -> list[tuple[int, str, str]]:
    digests = []
    with Communicator(rank, peers, timeout_s=30) as comm:
        assert (comm.rank, comm.size) == (rank, len(peers))
        for count in SIZES:
            everyone = inputs_for(count, len(peers))
            wide = everyone.astype(np.float64)
            references = {
                "sum": wide.sum(axis=0),
                "mean": wide.mean(axis=0),
                "min": everyone.min(axis=0, initial=np.inf),
                "max": everyone.max(axis=0, initial=-np.inf),
            }
            for op in OPS:
                x = everyone[rank].copy()
                if count == 1000:
                    x = x.reshape(8, 125)  # any shape: the layout, not the shape, matters
                out = comm.allreduce(x, op=op)
                assert out is x, "allreduce must work in place and return its argument"
                got = x.reshape(-1)
                if op in ("min", "max"):
                    np.testing.assert_array_equal(got, references[op], err_msg=f"{op} of {count}")
                else:
                    np.testing.assert_allclose(
                        got, references[op], rtol=1e-5, atol=1e-6, err_msg=f"{op} of {count}"
                    )
                digests.append((count, op, hashlib.sha256(got.tobytes()).hexdigest()))
    return digests


def _barrier_with_staggered_arrivals(rank: int, peers: list[str]) -> tuple[float, float]:
    with Communicator(rank, peers, timeout_s=10) as comm:
        comm.barrier()  # everyone connected and ready
        time.sleep(0.3 * rank)
        arrived = time.time()
        comm.barrier()
        left = time.time()
        comm.barrier()  # and the links still line up afterwards
    return arrived, left


def _bad_inputs_then_good_one(rank: int, peers: list[str]) -> dict[str, str]:
    messages = {}
    with Communicator(rank, peers, timeout_s=10) as comm:
        bad_calls = {
            "complex64": lambda: comm.allreduce(np.ones(8, dtype=np.complex64)),
            "int_mean": lambda: comm.allreduce(np.ones(8, dtype=np.int32), op="mean"),
            "bad_algorithm": lambda: comm.allreduce(np.ones(8, dtype=np.float32), algorithm="mesh"),
            "non_contiguous": lambda: comm.allreduce(np.ones(16, dtype=np.float32)[::2]),
            "fortran_order": lambda: comm.allreduce(np.ones((4, 3), dtype=np.float32, order="F")),
            "bad_op": lambda: comm.allreduce(np.ones(8, dtype=np.float32), op="avg"),
            "read_only": lambda: comm.allreduce(np.frombuffer(bytes(32), dtype=np.float32)),
            "not_an_array": lambda: comm.allreduce([1.0, 2.0]),  # type: ignore[arg-type]
        }
        for name, call in bad_calls.items():
            try:
                call()
            except ValueError as error:
                messages[name] = str(error)
            else:
                raise AssertionError(f"{name} was accepted")
        # Nothing was sent, so the group is still in step.
        x = np.full(5, rank + 1, dtype=np.float32)
        comm.allreduce(x)
        assert x.tolist() == [float(sum(range(1, len(peers) + 1)))] * 5
    return messages


def _one_rank_exits_midway(rank: int, peers: list[str], leaver: int) -> tuple[str, str, float]:
    comm = Communicator(rank, peers, timeout_s=5)
    x = np.ones(1000, dtype=np.float32)
    comm.allreduce(x)
    if rank == leaver:
        os._exit(0)  # no close(), no goodbye: like a crash
    big = np.ones(SIXTEEN_MIB, dtype=np.float32)
    started = time.monotonic()
    try:
        for _ in range(3):
            comm.allreduce(big)
    except CollectiveError as error:
        return type(error).__name__, str(error), time.monotonic() - started
    raise AssertionError("allreduce kept working after a rank exited")


def _one_rank_goes_silent(rank: int, peers: list[str]) -> tuple[str, str, float] | None:
    comm = Communicator(rank, peers, timeout_s=1)
    if rank == 1:
        time.sleep(2.5)  # alive, connected, but never joins the collective
        comm.close()
        return None
    started = time.monotonic()
    try:
        comm.allreduce(np.ones(10, dtype=np.float32))
    except CollectiveTimeout as error:
        elapsed = time.monotonic() - started
        # The communicator closed itself; later calls fail fast.
        try:
            comm.barrier()
        except CollectiveError as later:
            return str(error), str(later), elapsed
        raise AssertionError("a communicator that timed out was still usable") from None
    raise AssertionError("allreduce returned without its peer")


def _mismatched_counts(rank: int, peers: list[str]) -> str:
    with Communicator(rank, peers, timeout_s=5) as comm:
        try:
            comm.allreduce(np.ones(10 + rank, dtype=np.float32))
        except CollectiveError as error:
            assert not isinstance(error, CollectiveTimeout), (
                "a mismatch must be reported, not waited out"
            )
            return str(error)
    raise AssertionError("allreduce accepted arrays of different sizes")


def _wrong_group(rank: int, peers: list[str]) -> tuple[str, str, float]:
    # Rank 1 was started with a peer list of another size (a stale cluster spec).
    my_peers = peers if rank == 0 else [*peers, "127.0.0.1:9"]
    started = time.monotonic()
    try:
        Communicator(rank, my_peers, timeout_s=3)
    except CollectiveError as error:
        return type(error).__name__, str(error), time.monotonic() - started
    raise AssertionError("a group formed from mismatched peer lists")


def _interrupted_while_waiting(rank: int, peers: list[str]) -> float | None:
    comm = Communicator(rank, peers, timeout_s=20)
    if rank == 1:
        time.sleep(2)
        comm.close()
        return None
    threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGINT)).start()
    started = time.monotonic()
    try:
        comm.barrier()
    except KeyboardInterrupt:
        return time.monotonic() - started
    raise AssertionError("barrier returned without its peer")


# --- tests -----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_allreduce_matches_numpy_and_is_identical_on_every_rank(n: int) -> None:
    results = run_ranks(_allreduce_every_op_and_size, n)
    assert sorted(results) == list(range(n))
    for rank in range(1, n):
        assert results[rank] == results[0], f"rank {rank} ended with different bits than rank 0"


def test_barrier_releases_nobody_before_the_last_rank_arrives() -> None:
    results = run_ranks(_barrier_with_staggered_arrivals, 3)
    last_arrival = max(arrived for arrived, _ in results.values())
    first_departure = min(left for _, left in results.values())
    assert first_departure >= last_arrival
    assert results[0][1] - results[0][0] >= 0.5  # rank 0 waited for rank 2's 0.6 s delay


def test_bad_input_raises_value_error_on_the_calling_rank_and_keeps_the_group_usable() -> None:
    results = run_ranks(_bad_inputs_then_good_one, 2)
    for messages in results.values():
        assert "float32" in messages["complex64"] and "complex64" in messages["complex64"]
        assert "mean" in messages["int_mean"] and "int32" in messages["int_mean"]
        assert "'mesh'" in messages["bad_algorithm"] and "ring" in messages["bad_algorithm"]
        assert "contiguous" in messages["non_contiguous"]
        assert "contiguous" in messages["fortran_order"]
        assert "'avg'" in messages["bad_op"] and "sum" in messages["bad_op"]
        assert "writeable" in messages["read_only"]
        assert "numpy.ndarray" in messages["not_an_array"]


@pytest.mark.parametrize("leaver", [0, 2])
def test_rank_exiting_midway_makes_the_others_fail_within_the_timeout(leaver: int) -> None:
    results = run_ranks(_one_rank_exits_midway, 3, leaver, timeout_s=30)
    survivors = {rank: value for rank, value in results.items() if rank != leaver}
    assert sorted(survivors) == sorted(set(range(3)) - {leaver})
    for kind, message, elapsed in survivors.values():
        assert kind in ("CollectiveError", "CollectiveTimeout")
        assert "allreduce" in message and "rank" in message
        assert elapsed < 5 + 1.5


def test_silent_peer_raises_collective_timeout_after_timeout_s() -> None:
    results = run_ranks(_one_rank_goes_silent, 2)
    timeout_message, later_message, elapsed = results[0]
    assert 0.9 <= elapsed < 2.0
    assert "allreduce on rank 0" in timeout_message and "rank 1" in timeout_message
    assert "closed" in later_message


def test_ranks_calling_different_sizes_fail_with_both_sizes_named() -> None:
    results = run_ranks(_mismatched_counts, 2)
    assert "of 10 float32" in results[0] and "of 11 float32" in results[0]
    assert "of 11 float32" in results[1] and "of 10 float32" in results[1]


def test_peer_from_a_different_group_is_refused_with_a_reason() -> None:
    results = run_ranks(_wrong_group, 2)
    kind, message, elapsed = results[0]
    assert kind == "CollectiveError" and "different size" in message and elapsed < 2.5
    kind, message, _ = results[1]
    assert kind == "CollectiveTimeout" and "refused a connection" in message


def test_ctrl_c_interrupts_a_blocked_collective() -> None:
    results = run_ranks(_interrupted_while_waiting, 2)
    assert results[0] < 2.0


def test_single_rank_needs_no_sockets_and_is_a_context_manager() -> None:
    with Communicator(0, ["127.0.0.1:1"], timeout_s=1) as comm:
        x = np.arange(5, dtype=np.float32)
        for op in OPS:
            assert comm.allreduce(x, op=op) is x
        np.testing.assert_array_equal(x, np.arange(5, dtype=np.float32))
        comm.barrier()
    assert comm.closed
    with pytest.raises(CollectiveError, match="closed"):
        comm.allreduce(x)


@pytest.mark.parametrize(
    ("rank", "peers", "timeout_s", "fix"),
    [
        (2, ["127.0.0.1:1", "127.0.0.1:2"], 1, "out of range"),
        (-1, ["127.0.0.1:1"], 1, "out of range"),
        (0, [], 1, "empty"),
        (0, ["localhost"], 1, "host:port"),
        (0, ["127.0.0.1:99999"], 1, "1 to 65535"),
        (0, ["::1:80"], 1, "brackets"),
        (0, ["127.0.0.1:1"], -1, "positive"),
    ],
)
def test_bad_construction_arguments_raise_value_error(
    rank: int, peers: list[str], timeout_s: float, fix: str
) -> None:
    with pytest.raises(ValueError, match=fix):
        Communicator(rank, peers, timeout_s=timeout_s)


def test_timeout_none_reads_collective_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTIVE_TIMEOUT", "2.5")
    assert Communicator(0, ["127.0.0.1:1"]).timeout_s == 2.5
    monkeypatch.delenv("COLLECTIVE_TIMEOUT")
    assert Communicator(0, ["127.0.0.1:1"]).timeout_s == 60.0
    monkeypatch.setenv("COLLECTIVE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="COLLECTIVE_TIMEOUT"):
        Communicator(0, ["127.0.0.1:1"])


def test_exceptions_fit_the_python_hierarchy() -> None:
    assert issubclass(CollectiveError, OSError)
    assert issubclass(CollectiveTimeout, TimeoutError)
    assert issubclass(CollectiveTimeout, CollectiveError)


def test_native_module_checks_arguments_itself() -> None:
    # The facade checks first with friendlier messages; the extension must not
    # trust it (other bindings may call it), and must never copy silently.
    from agent.native import _collective

    native = _collective.Communicator(0, ["127.0.0.1:1"], 1.0)
    with pytest.raises(ValueError, match="float32"):
        native.allreduce(np.ones(4, dtype=np.complex128), "sum")
    with pytest.raises(ValueError, match="mean"):
        native.allreduce(np.ones(4, dtype=np.int64), "mean")
    with pytest.raises(ValueError, match="algorithm"):
        native.allreduce(np.ones(4, dtype=np.float32), "sum", "mesh")
    with pytest.raises(ValueError, match="contiguous"):
        native.allreduce(np.ones(8, dtype=np.float32)[::2], "sum")
    with pytest.raises(ValueError, match="sum"):
        native.allreduce(np.ones(4, dtype=np.float32), "product")
    native.close()
