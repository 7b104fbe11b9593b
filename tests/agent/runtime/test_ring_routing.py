"""Choosing the routed ring's order from a probe's matrix (agent.runtime.routing): hand-made
matrices whose best ring is known, the hysteresis that keeps a ring that is good enough,
and a larger group (nearest neighbour)."""

from __future__ import annotations

import numpy as np

from agent.runtime import routing


def matrix(n: int, fast: float = 0.001, slow: dict[tuple[int, int], float] | None = None):
    times = np.full((n, n), fast)
    np.fill_diagonal(times, 0.0)
    for (a, b), seconds in (slow or {}).items():
        times[a, b] = seconds  # one direction only: the hop's cost is the slower one
    return times


def hops(order: tuple[int, ...]) -> set[frozenset[int]]:
    return {frozenset((order[i], order[(i + 1) % len(order)])) for i in range(len(order))}


def test_a_slow_path_between_1_and_2_gives_the_ring_0_1_3_2():
    times = matrix(4, slow={(2, 1): 0.1})
    assert routing.best_ring(times) == (0, 1, 3, 2)
    assert routing.choose_ring(times, (0, 1, 2, 3)) == (0, 1, 3, 2)
    cost = routing.hop_costs(times)
    assert routing.ring_cost(cost, (0, 1, 2, 3))[0] == 0.1
    assert routing.ring_cost(cost, (0, 1, 3, 2))[0] == 0.001


def test_two_slow_paths_are_both_avoided_where_a_ring_can():
    # 6 ranks; 0–1 and 3–4 slow: the rank-order ring uses both.
    times = matrix(6, slow={(0, 1): 0.05, (4, 3): 0.08})
    order = routing.best_ring(times)
    assert order[0] == 0 and sorted(order) == list(range(6))
    assert not hops(order) & {frozenset((0, 1)), frozenset((3, 4))}


def test_when_every_ring_crosses_a_slow_link_the_least_slow_wins():
    # Rank 3's whole link is slow (to everyone), 0.2 s towards 1 and 0.05 s otherwise:
    # every ring has two hops at rank 3, and the best avoids the 3–1 hop.
    times = matrix(4, slow={(3, 0): 0.05, (3, 1): 0.2, (3, 2): 0.05})
    order = routing.best_ring(times)
    assert frozenset((1, 3)) not in hops(order)
    assert routing.ring_cost(routing.hop_costs(times), order)[0] == 0.05


def test_a_ring_within_twice_the_best_is_kept():
    noisy = matrix(4, slow={(1, 2): 0.0019})  # probe noise: under KEEP_WITHIN × the best
    assert routing.choose_ring(noisy, (0, 1, 2, 3)) == (0, 1, 2, 3)
    # Once routed around a path that has recovered, the routed ring stays.
    assert routing.choose_ring(matrix(4), (0, 1, 3, 2)) == (0, 1, 3, 2)
    slow = matrix(4, slow={(1, 2): 0.0021})
    assert routing.choose_ring(slow, (0, 1, 2, 3)) == (0, 1, 3, 2)


def test_small_groups_and_large_ones():
    assert routing.best_ring(matrix(2)) == (0, 1)
    assert routing.best_ring(matrix(3, slow={(0, 1): 1.0})) == (0, 1, 2)  # every pair used
    # Above EXACT_UP_TO ranks: nearest neighbour from rank 0, still a permutation that
    # avoids the one slow path when a neighbour is as good.
    n = routing.EXACT_UP_TO + 2
    times = matrix(n, slow={(0, 1): 0.5})
    order = routing.best_ring(times)
    assert sorted(order) == list(range(n)) and order[0] == 0
    assert frozenset((0, 1)) not in hops(order)


def test_a_whole_slow_link_gives_the_tree_with_that_worker_as_a_leaf():
    # Rank 1's link is slow to everyone: every ring crosses it twice.
    times = matrix(4, slow={(1, 0): 0.05, (1, 2): 0.06, (1, 3): 0.05})
    assert routing.slow_nodes(routing.hop_costs(times)) == [1]
    assert routing.plan(times, (0, 1, 2, 3)) == ("tree", (0, 2, 3, 1))
    # One slow path is not a slow worker: the ring goes around it.
    one_path = matrix(4, slow={(2, 1): 0.1})
    assert routing.slow_nodes(routing.hop_costs(one_path)) == []
    assert routing.plan(one_path, (0, 1, 2, 3)) == ("ring", (0, 1, 3, 2))
    # Recovered: back to the ring, in the order in force (within KEEP_WITHIN of the best).
    assert routing.plan(matrix(4), (0, 2, 3, 1), "tree") == ("ring", (0, 2, 3, 1))
    # Probe noise (a worker's paths 3× the others') does not leave the ring, but once on
    # the tree, a worker still 3× slower keeps it there.
    noisy = matrix(4, slow={(1, 0): 0.003, (1, 2): 0.003, (1, 3): 0.003})
    assert routing.plan(noisy, (0, 1, 2, 3), "ring") == ("ring", (0, 1, 2, 3))
    assert routing.plan(noisy, (0, 2, 3, 1), "tree") == ("tree", (0, 2, 3, 1))


def test_slow_workers_only_when_few_enough_to_be_leaves():
    slow_half = matrix(4, slow={(a, b): 0.05 for a in (2, 3) for b in range(4) if a != b})
    assert routing.slow_nodes(routing.hop_costs(slow_half)) == []  # 2 of 4: not leaves only
    eight = matrix(8, slow={(a, b): 0.05 for a in (5, 6) for b in range(8) if a != b})
    assert routing.slow_nodes(routing.hop_costs(eight)) == [5, 6]
    assert routing.plan(eight, tuple(range(8)))[1][-2:] == (5, 6)
    assert routing.slow_nodes(routing.hop_costs(matrix(2, slow={(0, 1): 1.0}))) == []
