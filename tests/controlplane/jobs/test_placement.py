"""Placement: one node when one fits (best fit), else spread in contiguous rank ranges."""

import pytest

from controlplane.jobs.placement import NodeCapacity, plan_placement


def test_job_goes_to_the_tightest_node_that_holds_it():
    nodes = [NodeCapacity(1, 8), NodeCapacity(2, 2), NodeCapacity(3, 3)]
    assert plan_placement(nodes, 2) == {2: [0, 1]}
    assert plan_placement(nodes, 3) == {3: [0, 1, 2]}


def test_job_too_big_for_any_node_is_spread_most_free_first():
    nodes = [NodeCapacity(1, 1), NodeCapacity(2, 2), NodeCapacity(3, 1)]
    assert plan_placement(nodes, 4) == {2: [0, 1], 1: [2], 3: [3]}


def test_job_that_does_not_fit_at_all_is_not_placed():
    assert plan_placement([NodeCapacity(1, 1), NodeCapacity(2, 0)], 2) is None
    assert plan_placement([], 1) is None


def test_zero_workers_is_refused():
    with pytest.raises(ValueError):
        plan_placement([NodeCapacity(1, 4)], 0)
