"""Ranks that make different calls fail on every rank, promptly and with a reason, never hang.

One rank of three differs from the others in one way (shape, dtype, op, root,
collective or algorithm). Every rank must raise CollectiveError well before
its timeout (a timeout would mean someone waited for data that never came),
and the rank next to the odd one out must name both calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from native_ranks import free_peers, run_ranks

from agent.native import CollectiveError, CollectiveTimeout, Communicator

TIMEOUT_S = 8.0
ODD_RANK = 2


def _call(comm: Communicator, odd: bool, mismatch: str, algorithm: str) -> None:
    shape, dtype, op = (6, 5), np.float32, "sum"
    if odd and mismatch == "shape":
        shape = (5, 6)  # same element count: only the shape check can catch it
    if odd and mismatch == "count":
        shape = (6, 6)
    if odd and mismatch == "dtype":
        dtype = np.float64
    if odd and mismatch == "op":
        op = "max"
    if mismatch == "algorithm" and odd:
        algorithm = {"ring": "tree", "tree": "star", "star": "ring"}[algorithm]
    x = np.ones(shape, dtype=dtype)
    if mismatch == "collective" and odd:
        comm.broadcast(x, root=0, algorithm=algorithm)
    elif mismatch == "root":
        comm.broadcast(x, root=1 if odd else 0, algorithm=algorithm)
    else:
        comm.allreduce(x, op=op, algorithm=algorithm)


def _mismatched_calls(
    rank: int, peers: list[str], cases: list[tuple[str, str, list[str]]]
) -> dict[str, tuple[str, str, float]]:
    outcomes = {}
    for mismatch, algorithm, case_peers in cases:
        # A fresh group per case: a mismatch closes the communicator.
        comm = Communicator(rank, case_peers, timeout_s=TIMEOUT_S)
        started = time.monotonic()
        try:
            _call(comm, rank == ODD_RANK, mismatch, algorithm)
        except CollectiveError as error:
            outcomes[f"{mismatch}-{algorithm}"] = (
                type(error).__name__,
                str(error),
                time.monotonic() - started,
            )
        else:
            outcomes[f"{mismatch}-{algorithm}"] = ("returned", "", time.monotonic() - started)
        finally:
            comm.close()
    return outcomes


MISMATCHES = ("shape", "count", "dtype", "op", "root", "collective", "algorithm")
ALGORITHMS = ("ring", "tree", "star")


@pytest.fixture(scope="module")
def outcomes() -> dict[int, dict[str, tuple[str, str, float]]]:
    cases = [(m, a, free_peers(3)) for m in MISMATCHES for a in ALGORITHMS]
    return run_ranks(_mismatched_calls, 3, cases, timeout_s=120)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("mismatch", MISMATCHES)
def test_a_rank_calling_differently_makes_every_rank_raise(
    outcomes: dict[int, dict[str, Any]], mismatch: str, algorithm: str
) -> None:
    key = f"{mismatch}-{algorithm}"
    for rank in range(3):
        kind, message, elapsed = outcomes[rank][key]
        assert kind == "CollectiveError", f"rank {rank}: {kind} {message}"
        assert elapsed < TIMEOUT_S / 2, f"rank {rank} took {elapsed:.1f} s: {message}"
    messages = [outcomes[rank][key][1] for rank in range(3)]
    assert any("this rank is in" in m and "sent" in m for m in messages), messages


def _describe(rank: int, peers: list[str], make_call: Callable[[Communicator], Any]) -> str:
    with Communicator(rank, peers, timeout_s=TIMEOUT_S) as comm:
        try:
            make_call(comm)
        except CollectiveError as error:
            assert not isinstance(error, CollectiveTimeout)
            return str(error)
    raise AssertionError("the call succeeded")


def _dtype_differs(comm: Communicator) -> None:
    comm.allreduce(np.ones(4, dtype=np.float32 if comm.rank == 0 else np.int32))


def _shape_differs(comm: Communicator) -> None:
    comm.allreduce(np.ones((2, 3) if comm.rank == 0 else (3, 2), dtype=np.float32))


def test_a_dtype_mismatch_names_both_dtypes() -> None:
    results = run_ranks(_describe, 2, _dtype_differs)
    for message in results.values():
        assert "float32" in message and "int32" in message


def test_a_shape_mismatch_with_equal_sizes_says_the_shapes_differ() -> None:
    results = run_ranks(_describe, 2, _shape_differs)
    for message in results.values():
        assert "shape" in message
