"""The ring allreduce in another order of ranks (Communicator.set_ring_order), and the
routed ring that picks the order by probing (agent.runtime.routing).

On loopback (four processes, real sockets): every rank gets the exact reduction in any
order, grouped too; the order is reported, reset by the identity, refused when it is not
a permutation (before any byte moves) and when the ranks disagree (ValueError on every
rank, the old order kept, the group still usable). On emulated nodes (network
namespaces, needs root): with the path between nodes 1 and 2 cut to 20 Mbit/s, the
probe finds it, the ring is reordered to avoid it and the same allreduce gets faster; with
node 1's whole link slow, the tree with node 1 as a leaf is taken instead, and is faster.
The tree allreduce follows the order too, exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from native_ranks import run_ranks

from agent.native import Communicator
from bench import netns

TIMEOUT_S = 20.0


def _orders(rank: int, peers: list[str]) -> dict[str, Any]:
    comm = Communicator(rank, peers, timeout_s=TIMEOUT_S, algorithm="ring")
    report: dict[str, Any] = {"initial": comm.ring_order}
    sums, tree_sums = [], []
    for order in ([0, 2, 1, 3], [3, 1, 0, 2], [0, 1, 2, 3]):
        comm.set_ring_order(order)
        assert comm.ring_order == tuple(order)
        for count, dtype in ((4099, np.float32), (1 << 18, np.float64), (5, np.int32)):
            x = (np.arange(count) % 97 + 10 * rank).astype(dtype)
            comm.allreduce(x)
            sums.append(x.tobytes())
            # The tree follows the order too (its root is order[0]).
            y = (np.arange(count) % 97 + 10 * rank).astype(dtype)
            comm.allreduce(y, algorithm="tree")
            tree_sums.append(y.tobytes())
        a, b = np.full(1000, rank, np.float32), np.full(7, rank + 1.0, np.float32)
        comm.grouped_allreduce([a, b])
        sums.append(a.tobytes() + b.tobytes())
    report["sums"] = sums
    report["tree_sums"] = tree_sums
    try:
        comm.set_ring_order([0, 1, 1, 3])
    except ValueError as error:
        report["not_a_permutation"] = str(error)
    comm.set_ring_order([0, 3, 2, 1])
    try:
        comm.set_ring_order([0, 2, 1, 3] if rank == 2 else [0, 1, 3, 2])
    except ValueError as error:
        report["disagreement"] = str(error)
    report["after_disagreement"] = comm.ring_order
    x = np.full(10, 1.0, np.float32)
    comm.allreduce(x)
    report["still_usable"] = float(x[0])
    comm.close()
    return report


def test_any_order_gives_the_exact_reduction_and_disagreement_changes_nothing():
    results = run_ranks(_orders, 4, timeout_s=120)
    expected = []
    for _ in range(3):
        for count, dtype in ((4099, np.float32), (1 << 18, np.float64), (5, np.int32)):
            expected.append(
                sum((np.arange(count) % 97 + 10 * r).astype(dtype) for r in range(4))
                .astype(dtype)
                .tobytes()
            )
        a = np.full(1000, 0 + 1 + 2 + 3, np.float32)
        b = np.full(7, 1 + 2 + 3 + 4, np.float32)
        expected.append(a.tobytes() + b.tobytes())
    for rank, report in results.items():
        assert report["initial"] == (0, 1, 2, 3)
        # Small integers: exact in any order of summation, so every rank and order agree.
        assert report["sums"] == expected, rank
        assert report["tree_sums"] == [e for i, e in enumerate(expected) if i % 4 != 3], rank
        assert "every rank 0..3 once" in report["not_a_permutation"]
        assert "different orders" in report["disagreement"]
        assert report["after_disagreement"] == (0, 3, 2, 1)
        assert report["still_usable"] == 4.0


def _route_on(nodes: netns.EmulatedNodes) -> list[dict[str, Any]]:
    """Each rank of ring_order_rank.py in its node: time, route, time again."""
    script = Path(__file__).with_name("ring_order_rank.py")
    root = Path(__file__).resolve().parents[3]
    peers = ",".join(f"{nodes.address(i)}:{29600 + i}" for i in range(4))
    procs = [
        nodes.popen(
            rank,
            [sys.executable, str(script), str(rank), peers],
            stdout=subprocess.PIPE,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        for rank in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    return [json.loads(out.splitlines()[-1]) for out in outputs]


@pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))
def test_the_routed_ring_avoids_a_slowed_path_and_gets_faster():
    with netns.EmulatedNodes(4) as nodes:
        nodes.slow_path(1, 2, "20mbit")
        reports = _route_on(nodes)
    for report in reports:
        assert report["correct"]
        assert report["algorithm"] == "ring"
        assert report["order"] == [0, 1, 3, 2]  # the only ring of four without a 1–2 hop
        # The probe saw the slowed path (20 Mbit/s, a burst allowed through) and a fast ring.
        assert report["link_mbps_min"] < 40, report
        assert report["ring_hop_mbps"] > 5 * report["link_mbps_min"], report
    # 1 MiB through a 20 Mbit/s hop takes ≥ 0.6 s in rank order; around it, far less.
    slowest_before = max(r["rank_order_s"] for r in reports)
    slowest_after = max(r["routed_s"] for r in reports)
    assert slowest_before > 0.3, reports
    assert slowest_after < slowest_before / 4, reports


@pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))
def test_a_node_whose_whole_link_is_slow_becomes_a_leaf_of_the_tree():
    # Every link at 400 Mbit/s, node 1's at 20: every ring crosses node 1's link with
    # 1.5 MiB each way (≥ 0.6 s); the tree with node 1 as a leaf, 1 MiB (≥ 0.4 s).
    with netns.EmulatedNodes(4) as nodes:
        nodes.shape_links("400mbit", slow_node=1, slow_rate="20mbit")
        reports = _route_on(nodes)
    for report in reports:
        assert report["correct"]
        assert report["algorithm"] == "tree", report
        assert report["order"] == [0, 2, 3, 1]  # node 1 last: a leaf
    slowest_before = max(r["rank_order_s"] for r in reports)
    slowest_after = max(r["routed_s"] for r in reports)
    assert slowest_before > 0.5, reports
    assert slowest_after < 0.85 * slowest_before, reports
