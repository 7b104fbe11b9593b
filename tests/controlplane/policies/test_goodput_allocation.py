"""The goodput allocator (controlplane.policies.allocation): slots go where they raise the
harmonic mean of speedups most; jobs that do not fit wait; a restart penalty keeps jobs
put unless moving pays."""

import pytest

from controlplane.policies.allocation import JobDemand, allocate, power_mean, speedups
from controlplane.policies.goodput import GoodputError, JobModel, StepTimeModel


def scalable(key, current=0, max_workers=8):
    # Cheap sync, large noise scale: gains from every worker.
    model = JobModel(StepTimeModel(0.01, 0.001, 0.002, 0.0, 0.002, 0.0), gns=4000.0, base_batch=64)
    return JobDemand(key, model, current, 1, max_workers, max_batch=4096)


def poor(key, current=0, max_workers=8):
    # Sync costs more than computing, and a small noise scale: a second worker barely helps.
    model = JobModel(StepTimeModel(0.005, 0.0002, 0.2, 0.05, 0.2, 0.05), gns=30.0, base_batch=64)
    return JobDemand(key, model, current, 1, max_workers, max_batch=4096)


def test_power_mean_by_hand():
    assert power_mean([1.0, 2.0, 4.0], -1) == pytest.approx(3 / (1 + 0.5 + 0.25))
    assert power_mean([1.0, 3.0], 1) == pytest.approx(2.0)
    assert power_mean([2.0, 8.0], 0) == pytest.approx(4.0)
    assert power_mean([0.0, 3.0], -1) == 0.0


def test_speedup_is_one_at_the_fair_share():
    table = speedups(scalable(1), fair_share=2, slots_per_node=4)
    assert table[2] == pytest.approx(1.0) and table[0] == 0.0
    assert table[1] < 1.0 < table[4] < table[8]


def test_slots_go_to_the_job_that_scales():
    alloc = allocate([scalable(1), poor(2)], 8, slots_per_node=8)
    assert alloc[1] + alloc[2] <= 8
    assert alloc[2] >= 1 and alloc[1] >= 5 and alloc[1] > alloc[2]


def test_the_greedy_allocation_is_the_best_of_every_split():
    jobs = [scalable(1), poor(2), scalable(3, max_workers=4)]
    alloc = allocate(jobs, 9, slots_per_node=9)
    tables = {j.key: speedups(j, fair_share=3, slots_per_node=9) for j in jobs}

    def objective(a):
        return power_mean([tables[k][n] for k, n in a.items()], -1)

    best = max(
        (
            {1: a, 2: b, 3: c}
            for a in range(1, 9)
            for b in range(1, 9)
            for c in range(1, 5)
            if a + b + c <= 9
        ),
        key=objective,
    )
    assert objective(alloc) == pytest.approx(objective(best), rel=1e-9)


def test_jobs_that_do_not_fit_wait_and_running_jobs_keep_their_place():
    jobs = [scalable(5), scalable(1), scalable(3, current=2)]
    alloc = allocate(jobs, 2, slots_per_node=2)
    assert alloc == {3: 1, 1: 1, 5: 0}


def test_the_restart_penalty_keeps_a_job_put_when_moving_gains_little():
    jobs = [scalable(1, current=4), scalable(2, current=4, max_workers=8)]
    # Equal jobs: the free split is even (4/4), so nothing moves either way.
    assert allocate(jobs, 8, slots_per_node=8) == {1: 4, 2: 4}
    lopsided = [scalable(1, current=5), scalable(2, current=3)]
    assert allocate(lopsided, 8, slots_per_node=8) == {1: 4, 2: 4}
    assert allocate(lopsided, 8, slots_per_node=8, restart_penalty=0.3) == {1: 5, 2: 3}


def test_bad_arguments_are_refused():
    with pytest.raises(GoodputError, match="restart_penalty"):
        allocate([scalable(1)], 4, restart_penalty=1.0)
    with pytest.raises(GoodputError, match="min_workers"):
        allocate([JobDemand(1, scalable(1).model, 0, 3, 2, max_batch=64)], 4)
    assert allocate([], 4) == {}
