"""Hierarchical broadcast and allgather: one rank per node across nodes, shared memory inside.

Nodes are emulated with loopback addresses as in test_hierarchical.py: ranks on
127.0.0.1 are one node and share memory, ranks on 127.0.0.2 (and .3) are others,
reached over TCP. Checked: which algorithm runs ("hierarchical" whenever the
group spans nodes and some node has several ranks, equal or not; "auto" picks
it for large buffers), every rank ends with exactly the root's bytes (broadcast,
from several roots) or every rank's block (allgather), for every dtype, odd
sizes, 1-4 ranks per node, 2-3 nodes, unequal nodes and ranks not numbered
node by node; a switch to the flat ring and back; and ranks that disagree
about the algorithm fail instead of waiting.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from native_ranks import run_ranks

from agent.native import Communicator

DTYPES = ("float32", "float64", "float16", "int32", "int64")  # every dtype the API takes
SIZES = (1, 3, 4099, (1 << 18) + 5)


def on_hosts(peers: list[str], node_of: list[int]) -> list[str]:
    """The same ports, with rank r's host part telling its node: 127.0.0.<node+1>."""
    return [
        f"127.0.0.{node + 1}:{peer.rsplit(':', 1)[1]}"
        for node, peer in zip(node_of, peers, strict=True)
    ]


def data(rank: int, dtype: str, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed * 1000 + rank)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(size).astype(dtype)
    return rng.integers(0, 120, size=size).astype(dtype)


def _rooted_cases(
    rank: int, peers: list[str], node_of: list[int], chunk: str | None
) -> dict[str, Any]:
    import os

    if chunk == "leader":  # the leader scheme on equal nodes too
        os.environ["COLLECTIVE_HIERARCHICAL_SCHEME"] = "leader"
    elif chunk is not None:  # read once per process, on the first communicator
        os.environ["COLLECTIVE_HIERARCHICAL_CHUNK_BYTES"] = chunk
    peers = on_hosts(peers, node_of)
    n = len(peers)
    roots = sorted({0, n - 1, n // 2})
    out: dict[str, Any] = {"failures": []}
    with Communicator(rank, peers, timeout_s=30, algorithm="hierarchical") as comm:
        out["nodes"] = comm.nodes
        out["links"] = comm.links
        out["chosen"] = {
            "broadcast": [comm.broadcast_algorithm(c) for c in (0, 1, 1 << 20)],
            "allgather": [comm.allgather_algorithm(c) for c in (1, 1 << 20)],
            "broadcast_auto": [
                comm.broadcast_algorithm(c, algorithm="auto") for c in (16, 1 << 22)
            ],
            "allgather_auto": [comm.allgather_algorithm(c, algorithm="auto") for c in (4, 1 << 20)],
        }
        case = 0
        for dtype in DTYPES:
            for size in SIZES:
                case += 1
                for root in roots:
                    x = data(rank, dtype, size, case)
                    comm.broadcast(x, root=root)
                    expected = data(root, dtype, size, case)
                    if x.tobytes() != expected.tobytes():
                        out["failures"].append(f"broadcast {dtype}[{size}] from {root}")
                mine = data(rank, dtype, size, case)
                gathered = comm.allgather(mine)
                everyone = np.stack([data(r, dtype, size, case) for r in range(n)])
                if gathered.shape != everyone.shape or gathered.tobytes() != everyone.tobytes():
                    out["failures"].append(f"allgather {dtype}[{size}]")
        # Empty broadcast, and a 2-D allgather.
        empty = np.zeros(0, dtype=np.float32)
        comm.broadcast(empty, root=n - 1)
        block = np.full((3, 5), rank, dtype=np.int32)
        stacked = comm.allgather(block)
        if not all((stacked[r] == r).all() for r in range(n)):
            out["failures"].append("allgather (3, 5)")
        # A switch to the flat ring and back, like set_topology at a step boundary.
        comm.set_algorithm("ring")
        y = np.full(1001, float(rank), dtype=np.float32)
        comm.broadcast(y, root=1)
        comm.set_algorithm("hierarchical")
        z = comm.allgather(y)
        out["switched"] = [float(v) for v in z[:, 0]]
        comm.barrier()
    return out


# (node of each rank, COLLECTIVE_HIERARCHICAL_CHUNK_BYTES or "leader" for
# COLLECTIVE_HIERARCHICAL_SCHEME=leader). Equal nodes run the allgather's rings
# across nodes per local index, pipelined in chunks; unequal ones, and equal ones
# with "leader", its leader scheme.
LAYOUTS: dict[str, tuple[list[int], str | None]] = {
    "2x2": ([0, 0, 1, 1], None),
    "3x3": ([0, 0, 0, 1, 1, 1], None),
    "2x2x2": ([0, 0, 1, 1, 2, 2], None),
    "4x4": ([0] * 4 + [1] * 4, None),
    "2x2-chunks-4K": ([0, 0, 1, 1], "4K"),
    "3x3-one-chunk": ([0, 0, 0, 1, 1, 1], "0"),
    "2x2x2-chunks-4K": ([0, 0, 1, 1, 2, 2], "4K"),
    "1x4": ([0, 1, 1, 1, 1], None),
    "3x2": ([0, 0, 0, 1, 1], None),
    "2x1x3": ([0, 0, 1, 2, 2, 2], None),
    # Ranks not numbered node by node: equal nodes 0, 1, 0, 1 and unequal 0, 1, 0, 1, 2, 1.
    "interleaved-equal": ([0, 1, 0, 1], "4K"),
    "interleaved": ([0, 1, 0, 1, 2, 1], None),
    "2x2-leader": ([0, 0, 1, 1], "leader"),
    "3x3-leader": ([0, 0, 0, 1, 1, 1], "leader"),
    "2x2x2-leader": ([0, 0, 1, 1, 2, 2], "leader"),
    "interleaved-equal-leader": ([0, 1, 0, 1], "leader"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_hierarchical_broadcast_and_allgather_match_every_rank(layout: str) -> None:
    node_of, chunk = LAYOUTS[layout]
    n = len(node_of)
    results = run_ranks(_rooted_cases, n, node_of, chunk, timeout_s=180)
    nodes = tuple({node: None for node in node_of})  # first-seen order
    renumber = {node: i for i, node in enumerate(nodes)}
    for rank in range(n):
        got = results[rank]
        assert got["failures"] == [], f"rank {rank}: {got['failures']}"
        assert got["nodes"] == tuple(renumber[node] for node in node_of)
        assert got["chosen"] == {
            "broadcast": ["hierarchical"] * 3,
            "allgather": ["hierarchical"] * 2,
            "broadcast_auto": [got["chosen"]["broadcast_auto"][0], "hierarchical"],
            "allgather_auto": [got["chosen"]["allgather_auto"][0], "hierarchical"],
        }
        assert got["chosen"]["broadcast_auto"][0] != "hierarchical"
        assert got["chosen"]["allgather_auto"][0] != "hierarchical"
        assert got["switched"] == [1.0] * n
        for peer in range(n):
            kind = got["links"][peer]
            if peer == rank:
                assert kind == "self"
            else:
                assert kind == ("shm" if node_of[peer] == node_of[rank] else "tcp")


def _flat(rank: int, peers: list[str], node_of: list[int]) -> tuple[str, str]:
    with Communicator(rank, on_hosts(peers, node_of), timeout_s=30) as comm:
        x = np.arange(100, dtype=np.float32) * (rank + 1)
        comm.broadcast(x, root=0, algorithm="hierarchical")
        assert (x == np.arange(100)).all()
        g = comm.allgather(np.full(7, rank, dtype=np.int64), algorithm="hierarchical")
        assert (g[:, 0] == np.arange(len(peers))).all()
        return (
            comm.broadcast_algorithm(1 << 20, algorithm="hierarchical"),
            comm.allgather_algorithm(1 << 20, algorithm="hierarchical"),
        )


@pytest.mark.parametrize("node_of", [[0, 0, 0], [0, 1, 2]], ids=["one-node", "one-per-node"])
def test_one_node_or_one_rank_per_node_run_the_flat_ring(node_of: list[int]) -> None:
    results = run_ranks(_flat, len(node_of), node_of, timeout_s=60)
    for rank, chosen in results.items():
        assert chosen == ("ring", "ring"), f"rank {rank}"


def _disagree(rank: int, peers: list[str], collective: str) -> tuple[str, str]:
    from agent.native import CollectiveError

    peers = on_hosts(peers, [0, 0, 1, 1])
    comm = Communicator(rank, peers, timeout_s=20)
    algorithm = "hierarchical" if rank == 0 else "ring"
    x = np.ones(1 << 16, dtype=np.float32)
    try:
        if collective == "broadcast":
            comm.broadcast(x, root=0, algorithm=algorithm)
        else:
            comm.allgather(x, algorithm=algorithm)
    except CollectiveError as error:
        return type(error).__name__, str(error)
    finally:
        comm.close()
    raise AssertionError(f"{collective} ran with ranks disagreeing about the algorithm")


@pytest.mark.parametrize("collective", ["broadcast", "allgather"])
def test_ranks_that_disagree_about_the_algorithm_fail_not_hang(collective: str) -> None:
    results = run_ranks(_disagree, 4, collective, timeout_s=60)
    for rank, (kind, message) in results.items():
        # Named mismatches, before the 20 s timeout (the test's own limit is 60 s).
        assert kind == "CollectiveError", f"rank {rank}: {message}"
        assert f"{collective} on rank {rank}" in message


def _killed_mid_call(rank: int, peers: list[str], collective: str, victim: int) -> Any:
    import os
    import signal
    import threading
    import time

    from agent.native import CollectiveError

    comm = Communicator(rank, on_hosts(peers, [0, 0, 1, 1]), timeout_s=4.0)
    x = np.ones(1 << 18, dtype=np.float32)
    call = {
        "broadcast": lambda: comm.broadcast(x, root=0, algorithm="hierarchical"),
        "allgather": lambda: comm.allgather(x, algorithm="hierarchical"),
    }[collective]
    call()  # connected and in step
    if rank == victim:
        threading.Timer(0.05, os.kill, args=(os.getpid(), signal.SIGKILL)).start()
    for _ in range(10_000):
        started = time.monotonic()
        try:
            call()
        except CollectiveError as error:
            assert comm.closed
            return type(error).__name__, str(error), time.monotonic() - started
    raise AssertionError(f"{collective} kept working after a rank was killed")


@pytest.mark.parametrize("collective", ["broadcast", "allgather"])
def test_a_rank_killed_mid_call_makes_every_survivor_fail(collective: str) -> None:
    # Rank 3 is on node 1 and no leader: node 0's ranks only hear of it through the
    # links its failing node-mate closes.
    results = run_ranks(_killed_mid_call, 4, collective, 3, timeout_s=60)
    assert sorted(results) == [0, 1, 2]
    for rank, (kind, message, elapsed) in results.items():
        assert kind in ("CollectiveError", "CollectiveTimeout"), message
        assert f"{collective} on rank {rank}" in message
        assert elapsed < 4.0 + 1.0
