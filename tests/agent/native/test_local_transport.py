"""Ranks on one host: shared memory or TCP loopback (COLLECTIVE_LOCAL_TRANSPORT).

The same representative collectives (allreduce on every algorithm with
several dtypes and ops, small and large; broadcast, allgather,
reduce_scatter, grouped allreduce, consensus) run under "shm" and "tcp" and
must match NumPy and be bit-identical on every rank; `links` says which
transport each pair got. Also: a group where one rank listens on another
loopback address (its pairs stay on TCP while the others use shared memory,
and one wait sleeps on both kinds), no segment left in /dev/shm once a group
has formed, ranks started with different settings refuse to form a group,
and a bad value names the variable. Rank death and resizing are
parametrized over both transports in test_rank_death.py and
test_elastic_resize.py.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from native_ranks import run_ranks
from test_algorithm_selection import _construct
from test_collectives_match_numpy import LARGE, case_id, run_case

from agent.native import Communicator

TRANSPORTS = ("shm", "tcp")


@pytest.fixture(params=TRANSPORTS)
def local_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Sets COLLECTIVE_LOCAL_TRANSPORT for the ranks the test spawns."""
    monkeypatch.setenv("COLLECTIVE_LOCAL_TRANSPORT", request.param)
    return request.param


def representative_cases(n: int) -> list[tuple[Any, ...]]:
    cases: list[tuple[Any, ...]] = []
    for algorithm in ("ring", "tree", "star", "auto"):
        # float16 with odd counts first, so later float32/64 payloads start at
        # odd offsets in the shared ring (the unaligned, copying path).
        for dtype, op in (
            ("float16", "max"),
            ("float32", "sum"),
            ("float64", "mean"),
            ("int64", "sum"),
            ("int32", "min"),
        ):
            for size in (0, 7, 1001, 300_000):
                cases.append(("allreduce", algorithm, dtype, op, size))
        cases.append(("broadcast", algorithm, "float16", n - 1, 1001))
        cases.append(("allgather", algorithm, "float32", None, 1001))
        cases.append(("reduce_scatter", algorithm, "float32", "sum", 1001))
        cases.append(("grouped_allreduce", algorithm, "mixed", "sum", 1001))
    for op in ("sum", "mean"):
        cases.append(("allreduce", "ring", "float32", op, LARGE))
    cases.append(("broadcast", "ring", "float32", 0, LARGE))
    cases.append(("allgather", "ring", "float32", None, LARGE // 4))
    cases.append(("reduce_scatter", "ring", "float32", "sum", LARGE // 3))
    return cases


def _representative(rank: int, peers: list[str]) -> dict[str, Any]:
    outcomes: dict[str, Any] = {}
    with Communicator(rank, peers, timeout_s=30) as comm:
        outcomes["links"] = comm.links
        for case in representative_cases(len(peers)):
            try:
                result = run_case(comm, case)
                outcomes[case_id(case)] = "ok " + hashlib.sha256(result.tobytes()).hexdigest()
            except AssertionError as error:
                outcomes[case_id(case)] = f"wrong: {error}"
        outcomes["consensus"] = [
            comm.consensus(b"same"),
            comm.consensus(b"rank %d" % rank),
            comm.consensus(b"x" * 100_000),
        ]
        comm.barrier()
    return outcomes


@pytest.mark.parametrize("n", [2, 3])
def test_collectives_match_numpy_on_each_local_transport(local_transport: str, n: int) -> None:
    results = run_ranks(_representative, n, timeout_s=180)
    assert sorted(results) == list(range(n))
    failures = []
    for rank in range(n):
        expected_links = tuple("self" if r == rank else local_transport for r in range(n))
        assert results[rank]["links"] == expected_links
        assert results[rank]["consensus"] == [True, False, True]
    for case in representative_cases(n):
        cid = case_id(case)
        per_rank = {rank: results[rank][cid] for rank in range(n)}
        wrong = {rank: text for rank, text in per_rank.items() if not text.startswith("ok")}
        if wrong:
            failures.append(f"{cid}: {wrong}")
        elif case[0] != "reduce_scatter" and len(set(per_rank.values())) != 1:
            failures.append(f"{cid}: the ranks ended with different bits")
    assert not failures, "\n".join(failures)


def group_id(peers: list[str]) -> int:
    """hash_peers() of transport_tcp.cc: FNV-1a over the peer list."""
    value = 1469598103934665603
    for peer in peers:
        for byte in (peer + "\n").encode():
            value = ((value ^ byte) * 1099511628211) % (1 << 64)
    return value


def _mixed_hosts(rank: int, peers: list[str]) -> dict[str, Any]:
    import numpy as np

    # Rank 2 listens on another loopback address: same machine, but its host
    # part differs, so its pairs stay on TCP.
    port = peers[2].rsplit(":", 1)[1]
    peers = [*peers[:2], f"127.0.0.2:{port}"]
    with Communicator(rank, peers, timeout_s=20) as comm:
        segments = [
            name
            for name in os.listdir("/dev/shm")
            if name.startswith(f"adaptrain-{group_id(peers):016x}")
        ]
        sums = []
        for algorithm in ("ring", "tree", "star"):
            x = np.full(1 << 20, rank + 1, dtype=np.float32)
            comm.allreduce(x, algorithm=algorithm)
            sums.append(float(x[0]))
            assert np.all(x == x[0])
        comm.barrier()
        return {"links": comm.links, "sums": sums, "segments": segments}


@pytest.mark.parametrize("mode", ["auto", "shm"])
def test_pairs_on_another_host_part_stay_on_tcp_beside_shared_memory(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "shm" insists on shared memory only where the host parts match.
    monkeypatch.setenv("COLLECTIVE_LOCAL_TRANSPORT", mode)
    results = run_ranks(_mixed_hosts, 3, timeout_s=60)
    assert results[0]["links"] == ("self", "shm", "tcp")
    assert results[1]["links"] == ("shm", "self", "tcp")
    assert results[2]["links"] == ("tcp", "tcp", "self")
    for rank in range(3):
        assert results[rank]["sums"] == [6.0, 6.0, 6.0]
        # The higher rank unlinks a segment as soon as both sides mapped it.
        assert results[rank]["segments"] == []


def test_ranks_with_different_local_transports_refuse_to_form_a_group() -> None:
    env = [{"COLLECTIVE_LOCAL_TRANSPORT": "shm"}, {"COLLECTIVE_LOCAL_TRANSPORT": "tcp"}]
    results = run_ranks(_construct, 2, ["auto", "auto"], env)
    for message in results.values():
        assert "COLLECTIVE_LOCAL_TRANSPORT" in message


def _bad_local_transport(rank: int, peers: list[str]) -> str:
    os.environ["COLLECTIVE_LOCAL_TRANSPORT"] = "fast"
    try:
        Communicator(rank, peers, timeout_s=2)
    except ValueError as error:
        return str(error)
    return "formed"


def test_a_bad_local_transport_names_the_variable_and_the_choices() -> None:
    message = run_ranks(_bad_local_transport, 1)[0]
    assert "COLLECTIVE_LOCAL_TRANSPORT=fast" in message and "auto, shm or tcp" in message


def test_a_single_rank_reports_only_itself() -> None:
    with Communicator(0, ["127.0.0.1:1"], timeout_s=1) as comm:
        assert comm.links == ("self",)
