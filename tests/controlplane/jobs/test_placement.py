"""Placement: only nodes matching the node selector; one node when one fits (best fit), else
spread in contiguous rank ranges."""

import pytest

from controlplane.jobs.placement import NodeCapacity, eligible, labels_match, plan_placement


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


GPU = {"gpu": "a100"}


def test_only_nodes_whose_labels_contain_every_selector_pair_are_used():
    nodes = [
        NodeCapacity(1, 2, {"gpu": "a100", "zone": "b"}),
        NodeCapacity(2, 1, {"gpu": "v100"}),
        NodeCapacity(3, 1, {}),
    ]
    # Node 2 or 3 would be the tighter fit; neither matches.
    assert plan_placement(nodes, 1, GPU) == {1: [0]}
    assert plan_placement(nodes, 2, {"gpu": "a100", "zone": "b"}) == {1: [0, 1]}
    assert plan_placement(nodes, 1, {"gpu": "a100", "zone": "c"}) is None


def test_a_spread_uses_matching_nodes_only_even_when_others_have_room():
    nodes = [
        NodeCapacity(1, 1, GPU),
        NodeCapacity(2, 8, {}),
        NodeCapacity(3, 2, {**GPU, "rack": "r1"}),
    ]
    assert plan_placement(nodes, 3, GPU) == {3: [0, 1], 1: [2]}
    assert plan_placement(nodes, 4, GPU) is None  # 3 matching slots, though 11 are free


def test_an_empty_selector_matches_every_node_and_a_label_needs_its_exact_value():
    assert labels_match({}, {}) and labels_match({"gpu": "a100"}, None)
    assert not labels_match({}, GPU)
    assert not labels_match({"gpu": "A100"}, GPU)
    assert not labels_match({"GPU": "a100"}, GPU)
    assert plan_placement([NodeCapacity(1, 2, {"x": "y"})], 2, {}) == {1: [0, 1]}


def test_only_nodes_that_run_the_jobs_kind_of_code_are_used():
    strict = frozenset({"installed", "examples"})
    nodes = [NodeCapacity(1, 1, {}, strict), NodeCapacity(2, 4, {})]
    # Node 1 is the tighter fit, but does not run code bundles (its AGENT_CODE).
    assert plan_placement(nodes, 1, None, "bundles") == {2: [0]}
    assert plan_placement(nodes, 1, None, "examples") == {1: [0]}
    assert plan_placement([nodes[0]], 1, None, "bundles") is None
    assert plan_placement(nodes, 5, None, "bundles") is None  # 1 + 4 slots, but not for bundles
    assert eligible(nodes[0], {}, None) and not eligible(nodes[0], {}, "bundles")
