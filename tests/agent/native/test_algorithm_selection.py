"""Choosing algorithms: consensus, set_algorithm, the constructor's agreement check, per-call overrides.

consensus() must give the same answer on every rank, for equal and different
bytes of equal and different lengths; set_algorithm() is itself collective
and a disagreement raises on every rank and changes nothing; ranks started
with different algorithms or COLLECTIVE_AUTO_* settings refuse to form a
group.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from native_ranks import run_ranks

from agent.native import Communicator


def _consensus_answers(rank: int, peers: list[str]) -> list[bool]:
    n = len(peers)
    with Communicator(rank, peers, timeout_s=10) as comm:
        return [
            comm.consensus(b"same"),
            comm.consensus(b""),
            comm.consensus(b"x" * 100_000),
            comm.consensus(b"rank %d" % rank),  # same length, different bytes
            comm.consensus(b"x" * rank),  # different lengths, one of them empty
            comm.consensus(b"a" if rank == n - 1 else b"b"),  # only the last rank differs
            comm.consensus(bytes([0, rank % 2])),  # differs in one bit, two ranks alike
        ]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_consensus_is_true_only_when_every_rank_passed_the_same_bytes(n: int) -> None:
    results = run_ranks(_consensus_answers, n)
    expected = [True, True, True, n == 1, n == 1, n == 1, n == 1]
    for rank in range(n):
        assert results[rank] == expected, f"rank {rank}"


def _switch_algorithms(rank: int, peers: list[str]) -> dict[str, object]:
    outcome: dict[str, object] = {}
    with Communicator(rank, peers, timeout_s=10, algorithm="star") as comm:
        outcome["initial"] = comm.algorithm
        for name in ("tree", "ring", "auto"):
            comm.set_algorithm(name)
            outcome[f"after {name}"] = comm.algorithm
            x = np.full(1001, rank + 1, dtype=np.float64)
            comm.allreduce(x)  # the new algorithm runs the next call
            assert (x == sum(range(1, len(peers) + 1))).all()
        try:
            comm.set_algorithm("tree" if rank == 0 else "star")
        except ValueError as error:
            outcome["disagreement"] = str(error)
        outcome["after disagreement"] = comm.algorithm
        # A per-call override that every rank makes works whatever the default.
        x = np.full(7, rank, dtype=np.int64)
        comm.allreduce(x, op="max", algorithm="ring")
        assert (x == len(peers) - 1).all()
        assert not comm.closed
    return outcome


def test_set_algorithm_is_collective_and_a_disagreement_raises_everywhere() -> None:
    results = run_ranks(_switch_algorithms, 3)
    for rank, outcome in results.items():
        assert outcome["initial"] == "star"
        assert outcome["after tree"] == "tree"
        assert outcome["after ring"] == "ring"
        assert outcome["after auto"] == "auto"
        assert "different" in str(outcome["disagreement"]), f"rank {rank}"
        assert outcome["after disagreement"] == "auto"


def _construct(rank: int, peers: list[str], algorithms: list[str], env: list[dict]) -> str:
    os.environ.update(env[rank])
    try:
        Communicator(rank, peers, timeout_s=10, algorithm=algorithms[rank]).close()
    except ValueError as error:
        return str(error)
    return "formed"


def test_ranks_started_with_different_algorithms_refuse_to_form_a_group() -> None:
    results = run_ranks(_construct, 3, ["tree", "tree", "ring"], [{}, {}, {}])
    for message in results.values():
        assert "different settings" in message and "algorithm=" in message


def test_ranks_with_different_auto_thresholds_refuse_to_form_a_group() -> None:
    env = [{}, {"COLLECTIVE_AUTO_RING_MIN_BYTES": "1M"}]
    results = run_ranks(_construct, 2, ["auto", "auto"], env)
    for message in results.values():
        assert "COLLECTIVE_AUTO_RING_MIN_BYTES" in message


def test_ranks_with_equal_settings_form_a_group() -> None:
    env = [{"COLLECTIVE_AUTO_STAR_MAX_RANKS": "2"}] * 2
    assert run_ranks(_construct, 2, ["ring", "ring"], env) == {0: "formed", 1: "formed"}


def _bad_tunable(rank: int, peers: list[str]) -> str:
    os.environ["COLLECTIVE_AUTO_RING_MIN_BYTES"] = "lots"
    try:
        Communicator(rank, peers, timeout_s=2)
    except ValueError as error:
        return str(error)
    return "formed"


def test_a_bad_tunable_names_the_variable() -> None:
    message = run_ranks(_bad_tunable, 1)[0]
    assert "COLLECTIVE_AUTO_RING_MIN_BYTES=lots" in message


@pytest.mark.parametrize(
    ("call", "fix"),
    [
        (lambda c: c.set_algorithm("mesh"), "algorithm"),
        (lambda c: Communicator(0, ["127.0.0.1:1"], algorithm="fast"), "algorithm"),
        (lambda c: c.broadcast(np.ones(3, np.float32), root=1), "root"),
        (lambda c: c.consensus("text"), "bytes"),
        (lambda c: c.reduce_scatter(np.array(1.0, np.float32)), "1 dimension"),
        (lambda c: c.grouped_allreduce(np.ones(3, np.float32)), "list"),
        (lambda c: c.grouped_allreduce([np.ones(3, np.int32)], op="mean"), "mean"),
        (lambda c: c.grouped_allreduce([np.ones(4, np.float32)[::2]]), "contiguous"),
        (lambda c: c.allgather(np.ones(3, np.uint8)), "uint8"),
    ],
)
def test_bad_arguments_raise_value_error_before_anything_is_sent(call, fix: str) -> None:
    with Communicator(0, ["127.0.0.1:1"], timeout_s=1) as comm:
        with pytest.raises(ValueError, match=fix):
            call(comm)
        x = np.ones(2, np.float32)
        comm.allreduce(x)  # still usable
