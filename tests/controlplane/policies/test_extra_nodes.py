"""How many more nodes the goodput allocation would put to use (allocation.extra_nodes):
scalable jobs short of slots want nodes, poorly scaling ones do not, a job the fleet
cannot start always does, and the answer stays within the cap."""

import pytest
from test_goodput_allocation import poor, scalable

from controlplane.policies.allocation import (
    JobDemand,
    allocate,
    extra_nodes,
    power_mean,
    speedups,
)
from controlplane.policies.goodput import GoodputError


def test_scalable_jobs_short_of_slots_want_nodes_up_to_what_they_can_use():
    jobs = [scalable(1, current=2, max_workers=8), scalable(2, current=2, max_workers=8)]
    extra = extra_nodes(jobs, 4, slots_per_node=4, max_nodes=10)
    # 2 × 8 workers at most: 3 more nodes of 4 slots use them all, a 4th adds nothing.
    assert 1 <= extra.nodes <= 3
    assert extra.for_jobs == (1, 2)
    assert extra.objective_with >= extra.objective_now * 1.05
    # The objective is what it says: the harmonic mean of speedups at the fair share of 4.
    tables = {j.key: speedups(j, fair_share=2, slots_per_node=4) for j in jobs}
    plan = allocate(jobs, 4 + 4 * extra.nodes, slots_per_node=4)
    assert extra.objective_with == pytest.approx(
        power_mean([tables[k][n] for k, n in plan.items()], -1)
    )


def test_the_cap_bounds_the_answer():
    jobs = [scalable(1, current=2, max_workers=8), scalable(2, current=2, max_workers=8)]
    assert extra_nodes(jobs, 4, slots_per_node=4, max_nodes=1).nodes == 1
    assert extra_nodes(jobs, 4, slots_per_node=4, max_nodes=0).nodes == 0


def test_jobs_that_gain_little_from_workers_want_no_node():
    jobs = [poor(1, current=2), poor(2, current=2)]
    assert extra_nodes(jobs, 4, slots_per_node=4, max_nodes=5).nodes == 0


def test_a_fleet_already_big_enough_wants_nothing():
    jobs = [scalable(1, current=4, max_workers=4)]
    extra = extra_nodes(jobs, 8, slots_per_node=4, max_nodes=5)
    assert extra.nodes == 0 and extra.for_jobs == ()


def test_a_job_the_fleet_cannot_start_gets_a_node():
    # Two jobs needing 4 workers each at least, 4 slots: one waits (speedup 0, mean 0).
    model = scalable(1).model
    jobs = [
        JobDemand(1, model, current=4, min_workers=4, max_workers=4, max_batch=4096),
        JobDemand(2, model, current=0, min_workers=4, max_workers=4, max_batch=4096),
    ]
    extra = extra_nodes(jobs, 4, slots_per_node=4, max_nodes=3)
    assert extra.objective_now == 0.0
    assert extra.nodes == 1 and extra.for_jobs == (2,)


def test_bad_arguments_are_refused():
    with pytest.raises(GoodputError):
        extra_nodes([scalable(1)], 4, slots_per_node=0, max_nodes=1)
