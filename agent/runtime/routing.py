"""The ``routed_ring`` topology: a ring allreduce whose order avoids the slowest paths.

A ring passes every byte of the gradient over each of its hops, so one slow path
between two workers (a congested route, a busy switch port) slows the whole ring to
that path's rate. When only some paths are slow, a ring in another order can avoid
them and run at full speed: with the path between ranks 1 and 2 slowed, the ring
0 → 1 → 3 → 2 → 0 uses no 1–2 hop. This is KungFu's adaptation to network
interference (Mai et al., OSDI'20), done here by probing:

1. **Probe.** Every worker publishes a probe blob (``PROBE_BYTES``) and, once all have
   (a barrier), fetches every peer's copy over the peer-to-peer blob connections
   (:meth:`agent.native.Communicator.request`: the same hosts as the collectives'), timing
   each fetch (best of ``PROBE_REPEATS``). The per-pair seconds are summed into one matrix
   by an allreduce, so every worker holds the same figures.
2. **Choose.** The ring whose slowest hop (each pair's slower direction) is fastest
   (:func:`best_ring`: every ring up to ``EXACT_UP_TO`` workers, else nearest-neighbour
   from rank 0). The ring in force is kept unless its slowest hop is more than
   ``KEEP_WITHIN`` times the best one's: a probe on a busy machine is noisy, and a new
   order when nothing is slow buys nothing.
3. **Apply.** :meth:`~agent.native.Communicator.set_ring_order` (collective; the native
   ring runs on a renumbered view of the same connections).

When a worker's *whole* link is slow (every path to it: :func:`slow_nodes`), no ring order
helps — every ring crosses that link with 2(n−1)/n of the buffer each way — and the workers
use the **tree** in an order that puts the slow workers last (:func:`plan`): the last
ranks of a binary tree are leaves, whose links carry the buffer once each way (measured
1.67–1.77× faster than any ring with one of four links slowed, docs/adaptation.md). The
next probe that finds no slow worker goes back to the ring.

The trainer routes when the topology is switched to ``routed_ring`` (also when it
already is), in every new cluster version, every ``ring_probe_every`` steps (a
hyper-parameter; 0: never again), and when the ring slows down: at every report the
workers agree (a one-number allreduce) whether any one's communication time per step has
grown ``REPROBE_AFTER`` times over its least since the last probe — a path that slowed
after the probe — all workers at the same step boundary. Rank 0 reports ``ring_hop_mbps``, the
slowest hop of the ring now in force as the probe measured it, and
``link_mbps_min``, the slowest path measured between any two workers.
Framework-neutral: no TensorFlow here.
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any

import numpy as np

PROBE_BLOB = "adaptrain.link_probe"
PROBE_BYTES = 128 << 10
PROBE_REPEATS = 2
EXACT_UP_TO = 8
KEEP_WITHIN = 2.0
# A worker whose fastest path is this many times the median worker's is slow as a whole
# (a probe of a fast path on a busy machine varies 2–3×; real interference is 10× and more).
# Once the tree is in use, KEEP_WITHIN is enough to stay on it.
SLOW_NODE_FACTOR = 4.0
REPROBE_AFTER = 4.0


def probe_links(comm: Any, nbytes: int = PROBE_BYTES, repeats: int = PROBE_REPEATS) -> np.ndarray:
    """Collective: seconds for each worker to fetch ``nbytes`` from each other one,
    ``times[i, j]`` = rank i fetching from rank j (best of ``repeats``; 0 on the
    diagonal), the same matrix on every rank."""
    n, me = comm.size, comm.rank
    probe = np.zeros(max(nbytes // 4, 1), np.float32)
    comm.publish(PROBE_BLOB, probe)
    comm.barrier()  # every peer has published before anyone fetches
    out = np.empty_like(probe)
    times = np.zeros((n, n), np.float64)
    for k in range(1, n):  # rank r fetches from r+1, r+2, ...: one fetch per server at a time
        peer = (me + k) % n
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            comm.request(peer, PROBE_BLOB, out)
            best = min(best, time.perf_counter() - started)
        times[me, peer] = best
    comm.allreduce(times, op="sum", algorithm="tree")
    return times


def hop_costs(times: np.ndarray) -> np.ndarray:
    """A hop's cost: the slower direction of the pair (a ring in either direction)."""
    return np.maximum(times, times.T)


def ring_cost(cost: np.ndarray, order: tuple[int, ...]) -> tuple[float, float]:
    """(slowest hop, sum of hops) of the ring in ``order``."""
    hops = [float(cost[order[i], order[(i + 1) % len(order)]]) for i in range(len(order))]
    return max(hops), sum(hops)


def best_ring(times: np.ndarray) -> tuple[int, ...]:
    """The order, starting at rank 0, whose slowest hop is fastest (then the least in
    all), deterministic for a given matrix: every ring up to ``EXACT_UP_TO`` ranks (each
    cycle once: a ring and its reverse use the same hops), else nearest neighbour."""
    n = len(times)
    cost = hop_costs(times)
    if n <= 3:
        return tuple(range(n))  # every ring of three uses every pair
    if n <= EXACT_UP_TO:
        best: tuple[tuple[float, float], tuple[int, ...]] | None = None
        for rest in itertools.permutations(range(1, n)):
            if rest[0] > rest[-1]:
                continue  # the reverse of a ring already seen
            order = (0, *rest)
            key = ring_cost(cost, order)
            if best is None or key < best[0]:
                best = (key, order)
        assert best is not None
        return best[1]
    order, left = [0], set(range(1, n))
    while left:
        here = order[-1]
        nxt = min(left, key=lambda r: (cost[here, r], r))
        order.append(nxt)
        left.remove(nxt)
    return tuple(order)


def choose_ring(times: np.ndarray, current: tuple[int, ...]) -> tuple[int, ...]:
    """The ring to use: ``current`` unless its slowest hop is over ``KEEP_WITHIN`` times
    the best ring's."""
    cost = hop_costs(times)
    best = best_ring(times)
    if ring_cost(cost, current)[0] <= KEEP_WITHIN * ring_cost(cost, best)[0]:
        return current
    return best


def slow_nodes(cost: np.ndarray, factor: float = SLOW_NODE_FACTOR) -> list[int]:
    """Ranks whose *fastest* path is over ``factor`` times the median rank's fastest path —
    a whole link slow, not one route — when they are few enough to be leaves of a binary
    tree (at most (n − 1) // 2 of n ≥ 3 ranks); otherwise none."""
    n = len(cost)
    if n < 3:
        return []
    fastest = np.array([min(float(cost[k, j]) for j in range(n) if j != k) for k in range(n)])
    slow = [k for k in range(n) if fastest[k] > factor * float(np.median(fastest))]
    return slow if len(slow) <= (n - 1) // 2 else []


def plan(
    times: np.ndarray, current: tuple[int, ...], algorithm: str = "ring"
) -> tuple[str, tuple[int, ...]]:
    """The algorithm and order to use, given the ones in force: the tree with the slow
    workers last when some workers' whole links are slow (:func:`slow_nodes`; a tree in
    force stays while they are over ``KEEP_WITHIN``), else the ring (:func:`choose_ring`)."""
    slow = slow_nodes(hop_costs(times), KEEP_WITHIN if algorithm == "tree" else SLOW_NODE_FACTOR)
    if slow:
        return "tree", tuple([r for r in range(len(times)) if r not in slow] + slow)
    return "ring", choose_ring(times, current)


def route(comm: Any) -> dict[str, float]:
    """Collective: probe every path, put the ring in the best order (or, when a worker's
    whole link is slow, the tree with it as a leaf); the figures to report (Mbit/s as the
    probe measured)."""
    times = probe_links(comm)
    current = tuple(comm.ring_order)
    algorithm, order = plan(times, current, comm.algorithm)
    if order != current:
        comm.set_ring_order(order)
    if algorithm != comm.algorithm:
        comm.set_algorithm(algorithm)
        if comm.rank == 0:
            what = "the tree, slow workers as leaves," if algorithm == "tree" else "the ring"
            print(f"adaptrain: routed_ring: {what} in the order {list(order)}", file=sys.stderr)
    cost = hop_costs(times)
    bits = max(PROBE_BYTES // 4, 1) * 4 * 8
    slowest_hop = ring_cost(cost, order)[0]
    off_diagonal = cost[~np.eye(len(cost), dtype=bool)]
    return {
        "ring_hop_mbps": bits / slowest_hop / 1e6 if slowest_hop > 0 else 0.0,
        "link_mbps_min": bits / float(off_diagonal.max()) / 1e6 if off_diagonal.size else 0.0,
    }
