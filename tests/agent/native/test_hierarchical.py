"""The hierarchical allreduce: ranks on several "nodes" (host parts) reduce inside each node first.

Nodes are emulated with loopback addresses: ranks listening on 127.0.0.1 are
one node and share memory, ranks on 127.0.0.2 (and .3) are others, reached over
TCP. Checked: which algorithm runs ("hierarchical" only for equal ranks per
node, several nodes, several ranks each, and a buffer of at least one element
per rank; "auto" picks it for large buffers), results equal NumPy's and are
bit-identical on every rank for every dtype and op with odd sizes, and a group
can switch to and from it with set_algorithm. Real multi-namespace runs with a
rate-limited link are in bench/allreduce.py --nodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from native_ranks import run_ranks

from agent.native import Communicator


def on_nodes(peers: list[str], per_node: list[int]) -> list[str]:
    """The same ports, with rank r's host part telling its node: 127.0.0.<node+1>."""
    hosts = [f"127.0.0.{node + 1}" for node, count in enumerate(per_node) for _ in range(count)]
    return [f"{host}:{peer.rsplit(':', 1)[1]}" for host, peer in zip(hosts, peers, strict=True)]


def inputs(n: int, dtype: str, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal((n, size)).astype(dtype)
    return rng.integers(-1000, 1000, size=(n, size)).astype(dtype)


def reference(everyone: np.ndarray, op: str) -> np.ndarray:
    if op == "sum":
        return everyone.sum(axis=0, dtype=np.float64 if everyone.dtype.kind == "f" else None)
    if op == "mean":
        return everyone.astype(np.float64).mean(axis=0)
    return everyone.min(axis=0) if op == "min" else everyone.max(axis=0)


CASES = [
    ("float32", "sum", 1),
    ("float32", "sum", 4099),
    ("float64", "mean", 777),
    ("float16", "max", 1001),
    ("int32", "min", 12345),
    ("int64", "sum", 3),
    ("float32", "mean", 1 << 20),
]


def _allreduce_cases(
    rank: int,
    peers: list[str],
    per_node: list[int],
    chunk: str | None = None,
    scheme: str | None = None,
) -> dict[str, Any]:
    import os

    if chunk is not None:  # read once per process, on the first communicator
        os.environ["COLLECTIVE_HIERARCHICAL_CHUNK_BYTES"] = chunk
    if scheme is not None:
        os.environ["COLLECTIVE_HIERARCHICAL_SCHEME"] = scheme
    peers = on_nodes(peers, per_node)
    n = len(peers)
    out: dict[str, Any] = {"chosen": {}, "results": []}
    with Communicator(rank, peers, timeout_s=30, algorithm="hierarchical") as comm:
        out["nodes"] = comm.nodes
        out["links"] = comm.links
        for count in (1, n - 1, n, 1 << 20):
            out["chosen"][count] = comm.allreduce_algorithm(max(count, 1))
        out["auto_small"] = comm.allreduce_algorithm(16, algorithm="auto")
        out["auto_large"] = comm.allreduce_algorithm(1 << 22, algorithm="auto")
        for index, (dtype, op, size) in enumerate(CASES):
            everyone = inputs(n, dtype, size, seed=index)
            x = everyone[rank].copy()
            assert comm.allreduce(x, op=op) is x
            expected = reference(everyone, op)
            if np.dtype(dtype).kind == "f":
                tolerance = 1e-2 if dtype == "float16" else 1e-4
                np.testing.assert_allclose(x, expected, rtol=tolerance, atol=tolerance)
            else:
                np.testing.assert_array_equal(x, expected.astype(dtype))
            out["results"].append(x.tobytes())
        # A switch to the flat ring and back, like set_topology at a step boundary.
        comm.set_algorithm("ring")
        y = np.full(1000, rank + 1.0, dtype=np.float32)
        comm.allreduce(y)
        comm.set_algorithm("hierarchical")
        comm.allreduce(y)
        out["switched"] = float(y[0])
        comm.barrier()
    return out


@pytest.mark.parametrize(
    ("per_node", "chunk"),
    [
        ([2, 2], None),
        ([3, 3], None),
        ([2, 2, 2], None),
        ([4, 4], None),
        # Many chunks (every odd size cut into 4 KiB pieces through the pipeline).
        ([2, 2], "4K"),
        ([3, 3], "4K"),
        ([2, 2], "0"),  # one chunk: the phases one after another
        # Unequal nodes (a node that lost a rank): extras fold into a partner.
        ([3, 2], None),
        ([4, 3], "4K"),
        ([2, 1], None),
        ([2, 1, 3], None),
    ],
    ids=lambda p: p if isinstance(p, str) or p is None else "x".join(map(str, p)),
)
def test_hierarchical_allreduce_matches_numpy_and_is_bit_identical(
    per_node: list[int], chunk: str | None
) -> None:
    _check_cases(
        per_node, run_ranks(_allreduce_cases, sum(per_node), per_node, chunk, timeout_s=120)
    )


@pytest.mark.parametrize(
    "per_node",
    [[2, 2], [3, 3], [2, 2, 2], [4, 4], [3, 2]],  # [3, 2]: unequal nodes fold as before
    ids=lambda p: "x".join(map(str, p)),
)
def test_the_leader_scheme_matches_numpy_and_is_bit_identical(per_node: list[int]) -> None:
    """COLLECTIVE_HIERARCHICAL_SCHEME=leader: one rank per node crosses between nodes."""
    n = sum(per_node)
    _check_cases(per_node, run_ranks(_allreduce_cases, n, per_node, None, "leader", timeout_s=120))


def _check_cases(per_node: list[int], results: dict[int, dict[str, Any]]) -> None:
    n = sum(per_node)
    first = results[0]
    nodes = tuple(node for node, count in enumerate(per_node) for _ in range(count))
    for rank in range(n):
        got = results[rank]
        assert got["nodes"] == nodes
        # One element per rank at least, else the flat algorithms (the ring falls
        # back to the tree below one element per rank).
        assert got["chosen"] == {
            1: "tree",
            n - 1: "tree",
            n: "hierarchical",
            1 << 20: "hierarchical",
        }
        assert got["auto_small"] != "hierarchical"
        assert got["auto_large"] == "hierarchical"
        assert got["results"] == first["results"], f"rank {rank} ended with other bits"
        assert got["switched"] == float(sum(range(1, n + 1)) * n)
        # Ranks of one node share memory; other nodes are reached over TCP.
        for peer in range(n):
            kind = got["links"][peer]
            if peer == rank:
                assert kind == "self"
            else:
                assert kind == ("shm" if nodes[peer] == nodes[rank] else "tcp")


def _chosen(rank: int, peers: list[str], per_node: list[int]) -> tuple[str, str]:
    peers = on_nodes(peers, per_node)
    with Communicator(rank, peers, timeout_s=30, algorithm="hierarchical") as comm:
        x = np.arange(1 << 16, dtype=np.float32)
        comm.allreduce(x)
        assert x[1] == len(peers)
        return comm.allreduce_algorithm(1 << 16), comm.allreduce_algorithm(
            1 << 22, algorithm="auto"
        )


@pytest.mark.parametrize("per_node", [[4], [1, 1, 1]], ids=lambda p: "x".join(map(str, p)))
def test_one_node_or_one_rank_per_node_run_the_flat_ring(per_node: list[int]) -> None:
    results = run_ranks(_chosen, sum(per_node), per_node, timeout_s=60)
    for rank, (asked, auto) in results.items():
        assert asked == "ring", f"rank {rank}"
        assert auto == "ring", f"rank {rank}"


def _killed_mid_hierarchical(rank: int, peers: list[str], victim: int) -> tuple[str, str, float]:
    import os
    import signal
    import threading
    import time

    from agent.native import CollectiveError

    peers = on_nodes(peers, [2, 2])
    comm = Communicator(rank, peers, timeout_s=4.0, algorithm="hierarchical")
    x = np.ones(1 << 20, dtype=np.float32)
    comm.allreduce(x)  # connected and in step
    assert comm.allreduce_algorithm(x.size) == "hierarchical"
    if rank == victim:
        threading.Timer(0.05, os.kill, args=(os.getpid(), signal.SIGKILL)).start()
    for _ in range(10_000):
        started = time.monotonic()
        try:
            comm.allreduce(x)
        except CollectiveError as error:
            assert comm.closed
            return type(error).__name__, str(error), time.monotonic() - started
    raise AssertionError("allreduce kept working after a rank was killed")


@pytest.mark.parametrize("victim", [0, 3])
def test_a_rank_killed_mid_call_makes_every_survivor_fail_on_both_nodes(victim: int) -> None:
    # Survivors on the other node only share a sub-ring with the victim's
    # node-mates: the failure must still reach them (a failing rank closes all
    # its links), well within the timeout rather than by it.
    results = run_ranks(_killed_mid_hierarchical, 4, victim, timeout_s=60)
    survivors = sorted(set(range(4)) - {victim})
    assert sorted(results) == survivors
    for rank in survivors:
        kind, message, elapsed = results[rank]
        assert kind in ("CollectiveError", "CollectiveTimeout"), message
        assert f"allreduce on rank {rank}" in message
        assert elapsed < 4.0 + 1.0


def _chunk_settings_differ(rank: int, peers: list[str]) -> str:
    import os

    os.environ["COLLECTIVE_HIERARCHICAL_CHUNK_BYTES"] = "1M" if rank == 0 else "2M"
    try:
        Communicator(rank, on_nodes(peers, [2, 2]), timeout_s=30, algorithm="hierarchical")
    except ValueError as error:
        return str(error)
    raise AssertionError("ranks with different chunk sizes formed a group")


def test_ranks_with_different_chunk_sizes_refuse_to_form() -> None:
    # A different chunk count would cut the buffer differently on each side.
    results = run_ranks(_chunk_settings_differ, 4, timeout_s=60)
    for rank, message in results.items():
        assert "COLLECTIVE_HIERARCHICAL_CHUNK_BYTES" in message, f"rank {rank}: {message}"


def _node_loses_a_rank(rank: int, peers: list[str]) -> list[float] | None:
    """Version 1: nodes of 2 + 2. Rank 1 leaves; version 2 re-forms as 1 + 2 on the
    same addresses (node 0 now has one rank) and keeps the hierarchical allreduce."""
    peers = on_nodes(peers, [2, 2])
    x = np.arange(4099, dtype=np.float32) * (rank + 1)
    with Communicator(rank, peers, timeout_s=30, algorithm="hierarchical") as comm:
        assert comm.allreduce_algorithm(x.size) == "hierarchical"
        comm.allreduce(x, op="mean")
        np.testing.assert_allclose(x, np.arange(4099) * 2.5, rtol=1e-6)
    if rank == 1:
        return None
    survivors = [peers[0], peers[2], peers[3]]
    me = survivors.index(peers[rank])
    y = np.arange(4099, dtype=np.float64) * (me + 1)
    with Communicator(
        me, survivors, timeout_s=30, algorithm="hierarchical", cluster_version=2
    ) as comm:
        assert comm.nodes == (0, 1, 1)
        assert comm.allreduce_algorithm(y.size) == "hierarchical"
        comm.allreduce(y, op="mean")
        np.testing.assert_array_equal(y, np.arange(4099) * 2.0)
        z = np.full(1 << 18, me + 1, dtype=np.int64)
        comm.allreduce(z, op="max")
        assert (z == 3).all()
        return [float(y[1]), float(y[-1])]


def test_a_node_that_loses_a_rank_reforms_and_stays_hierarchical() -> None:
    results = run_ranks(_node_loses_a_rank, 4, timeout_s=120)
    assert results[1] is None
    assert results[0] == results[2] == results[3] == [2.0, 4098 * 2.0]


def _scheme(rank: int, peers: list[str], schemes: list[str]) -> str:
    import os

    os.environ["COLLECTIVE_HIERARCHICAL_SCHEME"] = schemes[rank]
    try:
        Communicator(rank, on_nodes(peers, [2, 2]), timeout_s=10).close()
    except ValueError as error:
        return str(error)
    return "formed"


def test_ranks_with_different_schemes_refuse_to_form_and_a_bad_one_is_named() -> None:
    mixed = ["leader", "shards", "shards", "shards"]
    for rank, message in run_ranks(_scheme, 4, mixed, timeout_s=60).items():
        assert "COLLECTIVE_HIERARCHICAL_SCHEME" in message, f"rank {rank}: {message}"
    bad = ["nearest"] * 4
    for message in run_ranks(_scheme, 4, bad, timeout_s=60).values():
        assert "COLLECTIVE_HIERARCHICAL_SCHEME=nearest is not valid" in message, message
