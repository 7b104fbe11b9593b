"""optimize_goodput: the batch with the highest goodput for a job's current workers, from its
step times and recent gradient noise scale, as a pure function over the engine's job state.

The policy engine asks :func:`goodput_choice` when a rule whose action is
``optimize_goodput`` fires, and turns its answer into a ``set_batch_size``. The step times
come from the job's whole-job series: its recent window (:func:`goodput_samples`), or over
the run, per configuration, when the caller gives ``JobState.profile``
(:func:`step_profile`, :func:`profile_add`); the model itself is ``goodput.py``'s.
The cluster allocator (``provisioning``) models each job the same way (:func:`job_model`
over the run's profile), with the cautious guess from one batch size.
"""

from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass
from typing import Any

from controlplane.policies import goodput
from controlplane.policies.rules import JobState, Policy, Rule

# optimize_goodput: the fewest aligned measurements to fit step times from, the least
# predicted gain worth a change (the model's error is of that order), and how far one
# decision may move the batch (the fit extrapolates poorly far from what it saw).
GOODPUT_MIN_SAMPLES = 3
GOODPUT_MIN_GAIN = 0.05
GOODPUT_MAX_FACTOR = 4.0
# A report can carry a one-off cost far above the job's steps: a run's first report
# includes tracing the model (~100× a step's compute on bench.adaptive_outcome's
# workload), and left in the window it made every batch but the current one look dear
# until it left (the first decision waited for it: step 55 with a window of 10 reports,
# 205 with 40). Among at least GOODPUT_MIN_SAMPLES measurements at one local batch and
# worker count, one whose compute time is above this many times their median is not
# fitted (load on a shared machine moves a step's time by a few times, not by ten).
GOODPUT_OUTLIER = 10.0
# Before a job has measured a second batch size, the share of its compute time taken as a
# fixed cost (goodput.fit_step_time): Pollux's half. The cautious 0 (no fixed cost) kept
# bench.adaptive_outcome's runs at their first batch for 105–435 steps (predicted gains
# under 5 %) while the GNS template had doubled twice.
GOODPUT_SINGLE_BATCH_FIXED_SHARE = 0.5
# The whole-job series a step-time measurement is made of (``aligned_samples``).
STEP_TIME_SERIES = ("compute_time", "comm_time", "step_time", "batch_size", "workers")


@dataclass(frozen=True)
class GoodputChoice:
    """The batch optimize_goodput picked, with the model's figures before and after."""

    batch: int
    goodput_now: float
    goodput_best: float
    throughput_now: float
    throughput_best: float
    efficiency_best: float
    gns: float

    def inputs(self) -> dict[str, Any]:
        return {
            "goodput_now": round(self.goodput_now, 6),
            "goodput_best": round(self.goodput_best, 6),
            "throughput_now": round(self.throughput_now, 6),
            "throughput_best": round(self.throughput_best, 6),
            "efficiency_best": round(self.efficiency_best, 6),
            "predicted_gain": round(self.goodput_best / self.goodput_now - 1.0, 6),
            "gns_used": round(self.gns, 6),
        }


def _at(series: list[tuple[int, float]], steps: list[int], step: int, default: float) -> float:
    """The series' value at ``step``: its last point at or before it (else ``default``);
    ``steps`` are the series' steps (a bisection, not a scan: a profile aligns 2,000 steps)."""
    i = bisect.bisect_right(steps, step)
    return series[i - 1][1] if i else default


def aligned_samples(
    series: dict[str, list[tuple[int, float]]], *, batch_size: int, workers: int
) -> list[goodput.StepSample]:
    """Step-time measurements from whole-job series: each step with both compute_time and
    comm_time, at the batch and worker count in force then (``batch_size`` and ``workers``
    before either is reported; one node assumed: the decision is for the job's current
    layout, so the fit only has to describe that)."""
    compute = dict(series.get("compute_time", []))
    comm = dict(series.get("comm_time", []))
    total = dict(series.get("step_time", []))
    batches = series.get("batch_size", [])
    counts = series.get("workers", [])
    batch_steps = [s for s, _ in batches]
    count_steps = [s for s, _ in counts]
    samples = []
    for step in sorted(compute.keys() & comm.keys()):
        k = max(1, int(_at(counts, count_steps, step, workers)))
        batch = _at(batches, batch_steps, step, batch_size)
        if batch <= 0 or not all(math.isfinite(x) for x in (compute[step], comm[step], batch)):
            continue
        samples.append(
            goodput.StepSample(
                local_batch=batch / k,
                workers=k,
                nodes=1,
                compute_time=max(0.0, compute[step]),
                comm_time=max(0.0, comm[step]),
                step_time=total.get(step),
            )
        )
    return samples


def goodput_samples(state: JobState) -> list[goodput.StepSample]:
    """Step-time measurements from the job's recent window (``aligned_samples``), less
    one-off outliers (GOODPUT_OUTLIER)."""
    samples = aligned_samples(state.recent, batch_size=state.batch_size, workers=state.workers)
    groups: dict[tuple[float, int], list[float]] = {}
    for sample in samples:
        groups.setdefault((sample.local_batch, sample.workers), []).append(sample.compute_time)
    medians = {
        key: statistics.median(times)
        for key, times in groups.items()
        if len(times) >= GOODPUT_MIN_SAMPLES
    }
    return [
        s
        for s in samples
        if not (
            (s.local_batch, s.workers) in medians
            and s.compute_time > GOODPUT_OUTLIER * medians[(s.local_batch, s.workers)]
        )
    ]


def step_profile(
    series: dict[str, list[tuple[int, float]]], *, batch_size: int, workers: int
) -> tuple[goodput.ProfilePoint, ...]:
    """The run's step times per configuration (``goodput.StepProfile``) from its whole-job
    series over the run, for ``JobState.profile``."""
    profile = goodput.StepProfile()
    for sample in aligned_samples(series, batch_size=batch_size, workers=workers):
        profile.add(sample)
    return tuple(profile.points())


def profile_add(
    profile: goodput.StepProfile,
    step: int,
    values: dict[str, float],
    *,
    batch_size: int,
    workers: int,
) -> None:
    """Add one whole-job report (``values`` at ``step``) to a run's profile, for callers
    that read reports as they come (replay, benchmarks) rather than from the store."""
    series = {name: [(step, values[name])] for name in STEP_TIME_SERIES if name in values}
    for sample in aligned_samples(series, batch_size=batch_size, workers=workers):
        profile.add(sample)


def uses_profile(policy: Policy) -> bool:
    """Whether a rule of the policy reads ``JobState.profile`` (optimize_goodput)."""
    return any(rule.action_type == "optimize_goodput" for rule in policy.rules)


def fit_samples(state: JobState) -> list[goodput.StepSample]:
    """What the step-time model is fitted to: with the run's profile, one point per
    configuration measured at least GOODPUT_MIN_SAMPLES times (its median times: a
    configuration's first report, carrying the new shape's tracing, does not decide it),
    or every configuration while none has been measured that often; without a profile, the
    window's measurements."""
    if not state.profile:
        return goodput_samples(state)
    settled = [p.sample for p in state.profile if p.count >= GOODPUT_MIN_SAMPLES]
    if settled:
        return settled
    if sum(p.count for p in state.profile) >= GOODPUT_MIN_SAMPLES:
        return [p.sample for p in state.profile]
    return []


def job_model(state: JobState, *, single_batch_fixed_share: float) -> goodput.JobModel | None:
    """The job's goodput model: step times fitted to :func:`fit_samples` (with
    ``single_batch_fixed_share``, see ``goodput.fit_step_time``), the window's mean ``gns``,
    and the current batch as the one the learning rate is set for; None when the job has
    not reported enough to say (no gns, fewer than GOODPUT_MIN_SAMPLES step times) or the
    fit fails."""
    noise = [v for _, v in state.recent.get("gns", []) if math.isfinite(v) and v >= 0]
    samples = fit_samples(state)
    enough = bool(samples) if state.profile else len(samples) >= GOODPUT_MIN_SAMPLES
    if not noise or not enough or state.batch_size < 1:
        return None
    try:
        fit = goodput.fit_step_time(samples, single_batch_fixed_share=single_batch_fixed_share)
    except goodput.GoodputError:
        return None
    return goodput.JobModel(fit, sum(noise) / len(noise), float(state.batch_size))


def goodput_choice(rule: Rule, state: JobState) -> GoodputChoice | None:
    """The batch with the highest goodput for the job's current workers (within the rule's
    bounds and a factor GOODPUT_MAX_FACTOR of the current batch), or None when the job has
    not reported enough to say (:func:`job_model`) or the best is not GOODPUT_MIN_GAIN
    better than staying put."""
    model = job_model(state, single_batch_fixed_share=GOODPUT_SINGLE_BATCH_FIXED_SHARE)
    if model is None:
        return None
    workers = max(1, state.workers)
    gns = model.gns
    try:
        high = state.batch_size * GOODPUT_MAX_FACTOR
        low = state.batch_size / GOODPUT_MAX_FACTOR
        if rule.bound_max is not None:
            high = min(high, rule.bound_max)
        if rule.bound_min is not None:
            low = max(low, rule.bound_min)
        best = goodput.best_batch(
            model, workers, min_batch=max(workers, math.ceil(low)), max_batch=int(high)
        )
    except goodput.GoodputError:
        return None
    now = float(model.goodput(state.batch_size, workers))
    if best.batch == state.batch_size or best.goodput < now * (1.0 + GOODPUT_MIN_GAIN):
        return None
    return GoodputChoice(
        batch=best.batch,
        goodput_now=now,
        goodput_best=best.goodput,
        throughput_now=float(model.throughput(state.batch_size, workers)),
        throughput_best=best.throughput,
        efficiency_best=best.efficiency,
        gns=gns,
    )
