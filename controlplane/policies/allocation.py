"""Goodput-driven cluster allocation (Pollux's scheduler, simplified): how many workers each
elastic job should have, as a pure function over the jobs' goodput models.

A job's *speedup* with K workers is its best goodput with K workers (batch chosen for K, see
:func:`goodput.best_batch`) over its best goodput with a fair share of the slots. The
allocation maximises the power mean with p = −1 (the harmonic mean) of the speedups, which
favours the jobs that gain most from a slot without starving any: minimising Σ 1/s_j is a
separable problem, and with speedups that grow ever more slowly with K, adding one slot at
a time where it lowers Σ 1/s_j most is optimal.

Moving a job costs it time (its workers re-form, or restart from a checkpoint); the
*restart penalty* discounts the speedup of a job whose worker count would change, so the
allocator moves a job only when the gain outweighs it. Jobs that do not fit at their
minimum wait (0 workers), running ones and older ones first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from controlplane.policies.goodput import GoodputError, JobModel, best_batch


@dataclass(frozen=True)
class JobDemand:
    """One elastic job as the allocator sees it: ``current`` workers now (0: not running),
    its bounds and its goodput model with the batch bounds it may use."""

    key: int
    model: JobModel
    current: int
    min_workers: int
    max_workers: int
    max_batch: int
    min_batch: int = 1
    max_local_batch: int | None = None


def power_mean(values: Sequence[float], p: float) -> float:
    """(mean of v^p)^(1/p); 0 when any value is 0 and p < 0 (the mean of the starved)."""
    if not values:
        raise GoodputError("the power mean of no values is undefined")
    if p == 0:
        return math.exp(sum(math.log(v) for v in values) / len(values)) if min(values) > 0 else 0.0
    if p < 0 and min(values) <= 0:
        return 0.0
    return float((sum(v**p for v in values) / len(values)) ** (1.0 / p))


def nodes_for(workers: int, slots_per_node: int) -> int:
    return max(1, -(-workers // max(1, slots_per_node)))


def speedups(job: JobDemand, *, fair_share: int, slots_per_node: int) -> dict[int, float]:
    """Speedup with K workers for K in 0..max_workers (0 workers: 0)."""
    top = job.max_workers

    def best(k: int) -> float:
        return best_batch(
            job.model,
            k,
            nodes_for(k, slots_per_node),
            min_batch=job.min_batch,
            max_batch=job.max_batch,
            max_local_batch=job.max_local_batch,
        ).goodput

    fair = min(max(fair_share, job.min_workers, 1), top)
    reference = best(fair)
    table = {0: 0.0}
    for k in range(1, top + 1):
        table[k] = best(k) / reference
    return table


def allocate(
    jobs: Sequence[JobDemand],
    slots: int,
    *,
    slots_per_node: int = 1,
    restart_penalty: float = 0.0,
) -> dict[int, int]:
    """Workers per job key (0: the job waits) using at most ``slots`` slots.

    ``restart_penalty`` in [0, 1) is the fraction of a job's speedup it loses, over the
    allocator's horizon, when its worker count changes (e.g. restart seconds / interval)."""
    if slots < 0:
        raise GoodputError(f"slots must be ≥ 0, got {slots}")
    if not 0.0 <= restart_penalty < 1.0:
        raise GoodputError(f"restart_penalty must be in [0, 1), got {restart_penalty}")
    for job in jobs:
        if not 1 <= job.min_workers <= job.max_workers:
            raise GoodputError(
                f"job {job.key}: need 1 ≤ min_workers ≤ max_workers, got "
                f"{job.min_workers} and {job.max_workers}"
            )
    if not jobs:
        return {}
    fair_share = max(1, slots // len(jobs))
    tables = {
        j.key: speedups(j, fair_share=fair_share, slots_per_node=slots_per_node) for j in jobs
    }
    # Who runs: the running jobs first (moving them to 0 would be a preemption), then by key.
    order = sorted(jobs, key=lambda j: (j.current == 0, j.key))
    alloc = {j.key: 0 for j in jobs}
    free = slots
    for job in order:
        if job.min_workers <= free:
            alloc[job.key] = job.min_workers
            free -= job.min_workers
    by_key = {j.key: j for j in jobs}

    def inverse(key: int, k: int) -> float:
        s = tables[key][k]
        return math.inf if s <= 0 else 1.0 / s

    while free > 0:
        gains = [
            (inverse(key, k) - inverse(key, k + 1), key)
            for key, k in alloc.items()
            if k > 0 and k < by_key[key].max_workers
        ]
        if not gains:
            break
        gain, key = max(gains)
        if gain <= 1e-12:
            break
        alloc[key] += 1
        free -= 1
    if restart_penalty > 0:
        alloc = _keep_where_moving_does_not_pay(alloc, jobs, tables, slots, restart_penalty)
    return alloc


@dataclass(frozen=True)
class ExtraNodes:
    """What more nodes would buy: ``nodes`` to add (0: the fleet is enough), the jobs that
    would get more workers with them, and the harmonic mean of speedups without and with."""

    nodes: int
    for_jobs: tuple[int, ...]
    objective_now: float
    objective_with: float


def extra_nodes(
    jobs: Sequence[JobDemand],
    slots: int,
    *,
    slots_per_node: int,
    max_nodes: int,
    min_gain: float = 0.05,
) -> ExtraNodes:
    """How many nodes of ``slots_per_node`` slots (at most ``max_nodes``) the allocation
    would put to use: each one added must raise the harmonic mean (p = −1) of the jobs'
    speedups, against a fair share of today's ``slots``, by at least ``min_gain`` of its
    value before. A job the fleet cannot start (0 workers) makes the mean 0, so the first
    node that starts every job always counts."""
    if max_nodes < 0 or slots_per_node < 1 or min_gain < 0:
        raise GoodputError("need max_nodes ≥ 0, slots_per_node ≥ 1 and min_gain ≥ 0")
    if not jobs:
        return ExtraNodes(0, (), 0.0, 0.0)
    fair_share = max(1, slots // len(jobs))
    tables = {
        j.key: speedups(j, fair_share=fair_share, slots_per_node=slots_per_node) for j in jobs
    }

    def objective(plan: dict[int, int]) -> float:
        return power_mean([tables[key][workers] for key, workers in plan.items()], -1.0)

    base = allocate(jobs, slots, slots_per_node=slots_per_node)
    now = best = objective(base)
    chosen, chosen_plan = 0, base
    for n in range(1, max_nodes + 1):
        plan = allocate(jobs, slots + n * slots_per_node, slots_per_node=slots_per_node)
        value = objective(plan)
        if value <= best * (1.0 + min_gain) and not (best == 0.0 and value > 0.0):
            break
        best, chosen, chosen_plan = value, n, plan
    grown = tuple(sorted(key for key, workers in chosen_plan.items() if workers > base[key]))
    return ExtraNodes(chosen, grown, now, best)


def _penalised_cost(
    alloc: dict[int, int],
    jobs: Sequence[JobDemand],
    tables: dict[int, dict[int, float]],
    penalty: float,
) -> float:
    """Σ 1/s over the admitted jobs, a moved job's speedup discounted by the penalty."""
    cost = 0.0
    for job in jobs:
        k = alloc[job.key]
        if k == 0:
            continue
        s = tables[job.key][k]
        if job.current > 0 and k != job.current:
            s *= 1.0 - penalty
        cost += math.inf if s <= 0 else 1.0 / s
    return cost


def _keep_where_moving_does_not_pay(
    alloc: dict[int, int],
    jobs: Sequence[JobDemand],
    tables: dict[int, dict[int, float]],
    slots: int,
    penalty: float,
) -> dict[int, int]:
    """Put back, one at a time, moved jobs whose move does not pay for its penalty (while the
    slots allow), keeping the best penalised allocation seen."""
    best = dict(alloc)
    best_cost = _penalised_cost(best, jobs, tables, penalty)
    improved = True
    while improved:
        improved = False
        for job in jobs:
            k = best[job.key]
            if job.current == 0 or k == 0 or k == job.current:
                continue
            trial = dict(best)
            trial[job.key] = min(job.current, job.max_workers)
            if sum(trial.values()) > slots:
                continue
            cost = _penalised_cost(trial, jobs, tables, penalty)
            if cost < best_cost - 1e-12:
                best, best_cost, improved = trial, cost, True
    return best
