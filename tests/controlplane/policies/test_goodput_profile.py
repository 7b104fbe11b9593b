"""optimize_goodput fits its step-time model on the run's whole history, per configuration
(goodput.StepProfile, goodput_choice.step_profile), as Pollux does: a batch size the job measured
once keeps informing the fit after the policy's window has moved past it. Before, the fit
saw only the window; once the window held one batch size again it fell back to the
cautious no-fixed-cost guess and the policy stepped back (bench.adaptive_outcome,
2026-12-03: 1461 → 597, 2052 → 788)."""

import math
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from controlplane.jobs.models import Job
from controlplane.metrics.models import MetricPoint
from controlplane.policies import goodput, goodput_choice, replay
from controlplane.policies.engine import evaluate_rule, parse_policy
from controlplane.policies.goodput import StepProfile, StepSample, StepTimeModel
from controlplane.policies.rules import JobState, RuleHistory
from controlplane.policies.services import job_policy_evaluate, policy_create
from tests.controlplane.policies.policy_steps import running_job

# T = 0.02 + 0.0005·m + 0.03 with K workers, φ = 400: the best global batch is
# sqrt(φ·(a + s)·K / b) = sqrt(400 · 0.05 · K / 0.0005).
TRUTH = StepTimeModel(0.02, 0.0005, 0.03, 0.0, 0.03, 0.0)


def optimum(workers):
    return math.sqrt(400 * 0.05 * workers / 0.0005)


POLICY = {
    "name": "goodput",
    "rules": [
        {"name": "tune", "when": "steps_since_fired >= 50", "action": {"type": "optimize_goodput"}}
    ],
}
RULE = parse_policy(POLICY).rules[0]


def series(batches, workers=4, gns=400.0, rng=None, noise=0.0):
    """Whole-job series over a run, one report every 10 steps per batch in ``batches``
    (times from TRUTH, times a factor 1 ± ``noise`` when ``rng`` is given)."""
    out = {n: [] for n in (*goodput_choice.STEP_TIME_SERIES, "gns")}
    for i, batch in enumerate(batches):
        step = 10 + 10 * i
        m = batch / workers
        jitter = (lambda: 1 + rng.uniform(-noise, noise)) if rng is not None else (lambda: 1.0)
        out["compute_time"].append((step, TRUTH.compute_time(m) * jitter()))
        out["comm_time"].append((step, TRUTH.sync_time(workers, 1) * jitter()))
        out["step_time"].append((step, TRUTH.step_time(m, workers, 1)))
        out["batch_size"].append((step, float(batch)))
        out["workers"].append((step, float(workers)))
        out["gns"].append((step, gns))
    return out


def state_of(run, batch, workers=4, *, window=10, profiled=True):
    """The engine's view at the end of ``run``: its last ``window`` reports, and the
    whole run's profile when ``profiled`` (else the windowed fit, as before)."""
    recent = {name: points[-window:] for name, points in run.items()}
    profile = goodput_choice.step_profile(run, batch_size=batch, workers=workers)
    return JobState(
        step=run["batch_size"][-1][0], batch_size=batch, lr=0.1, workers=workers,
        seconds_running=60.0, metrics={n: p[-1][1] for n, p in recent.items()}, recent=recent,
        profile=profile if profiled else (),
    )  # fmt: skip


def test_the_profile_keeps_one_median_point_per_configuration():
    profile = StepProfile(keep=3)
    for compute in (0.010, 0.011, 0.5, 0.012, 0.013):  # 0.5: a report with tracing in it
        profile.add(StepSample(32.0, 2, 1, compute, 0.004, compute + 0.004))
    profile.add(StepSample(64.0, 2, 1, 0.020, 0.004))
    [at32, at64] = profile.points()
    # The latest three at 32: 0.5, 0.012, 0.013 → median 0.013 (the one-off is outvoted).
    assert at32.count == 3 and at32.sample.compute_time == pytest.approx(0.013)
    assert at32.sample.step_time == pytest.approx(0.017)
    assert (at32.sample.local_batch, at32.sample.workers, at32.sample.nodes) == (32.0, 2, 1)
    assert at64.count == 1 and at64.sample.step_time is None


def test_the_profile_is_bounded_and_forgets_the_configuration_seen_longest_ago():
    profile = StepProfile(keep=2, max_configs=2)
    profile.add(StepSample(16.0, 1, 1, 0.01, 0.0))
    profile.add(StepSample(32.0, 1, 1, 0.02, 0.0))
    profile.add(StepSample(16.0, 1, 1, 0.01, 0.0))  # seen again: now the most recent
    profile.add(StepSample(64.0, 1, 1, 0.04, 0.0))
    assert [p.sample.local_batch for p in profile.points()] == [16.0, 64.0]
    with pytest.raises(goodput.GoodputError):
        StepProfile(keep=0)


def test_the_fit_on_a_run_profile_recovers_the_known_parameters():
    # Exactly without noise; within 5 % with ±3 % noise on each report.
    run = series([64] * 6 + [256] * 6 + [1024] * 6)
    fitted = goodput.fit_step_time(goodput_choice.fit_samples(state_of(run, 1024)))
    assert (fitted.alpha, fitted.beta) == (pytest.approx(0.02), pytest.approx(0.0005))
    assert fitted.sync_alpha == pytest.approx(0.03)
    rng = np.random.default_rng(7)
    noisy = series([64] * 8 + [256] * 8 + [1024] * 8, rng=rng, noise=0.03)
    fitted = goodput.fit_step_time(goodput_choice.fit_samples(state_of(noisy, 1024)))
    for batch in (64, 256, 400, 1024, 2048):
        m = batch / 4
        assert fitted.step_time(m, 4, 1) == pytest.approx(TRUTH.step_time(m, 4, 1), rel=0.05)


def test_a_batch_size_measured_before_the_window_still_informs_the_decision():
    """The run measured 128 and 192 early; the window now holds 256 only. With the whole
    history the fit has the fixed cost and asks for the true optimum (400); the windowed
    fit (the old behaviour) takes compute as proportional to the batch and does not."""
    run = series([128] * 8 + [192] * 8 + [256] * 12)
    firing = evaluate_rule(RULE, state_of(run, 256), RuleHistory()).firing
    assert firing is not None and abs(firing.value - optimum(4)) <= 2
    windowed = evaluate_rule(RULE, state_of(run, 256, profiled=False), RuleHistory()).firing
    assert windowed is None or abs(windowed.value - optimum(4)) > 50


def test_a_configuration_enters_the_fit_once_measured_three_times():
    # Two reports at 400 so far (the first carries tracing): the fit is the earlier batches'.
    run = series([128] * 5 + [256] * 5 + [400] * 2)
    run["compute_time"][-2] = (run["compute_time"][-2][0], 1.0)
    samples = goodput_choice.fit_samples(state_of(run, 400))
    assert sorted(s.local_batch for s in samples) == [32.0, 64.0]
    # Nothing measured three times yet: no decision.
    assert evaluate_rule(RULE, state_of(series([128] * 2), 128), RuleHistory()).firing is None


def test_replay_fits_the_whole_history_as_the_control_plane_does():
    run = series([128] * 8 + [192] * 8 + [256] * 12)
    ticks = [
        replay.Tick(
            step=run["batch_size"][i][0],
            time=1000.0 + i,
            values={name: points[i][1] for name, points in run.items()},
        )
        for i in range(len(run["batch_size"]))
    ]
    late = parse_policy({**POLICY, "rules": [{**POLICY["rules"][0], "when": "step >= 280"}]})
    result = replay.replay(
        late, ticks, start_time=1000.0, defaults=replay.Knobs(batch_size=128, lr=0.1, workers=4)
    )
    [decision] = result["decisions"]
    assert decision["step"] == 280
    assert abs(decision["action"]["value"] - optimum(4)) <= 2


@pytest.mark.django_db
def test_on_a_running_job_the_fit_reads_the_run_not_the_window(user, node):
    job = running_job(user, node)  # 2 workers, batch 32, at step 150
    policy = policy_create(owner=user, definition=POLICY)
    Job.objects.filter(id=job.id).update(
        policy=policy, policy_version=policy.version, batch_size=128
    )
    run = series([64] * 8 + [96] * 8 + [128] * 12, workers=2)
    now = timezone.now()
    points = [
        MetricPoint(
            job=job, run=job.current_run, name=name, rank=None, step=step, value=value,
            time=now - timedelta(seconds=300 - step),
        )
        for name, values in run.items()
        for step, value in values
    ]  # fmt: skip
    MetricPoint.objects.bulk_create(points)
    [decision] = job_policy_evaluate(job_id=job.id)
    # sqrt(400 · 0.05 · 2 / 0.0005) = 282.8; the window alone (128 only) would not find it.
    assert abs(decision.action["value"] - optimum(2)) <= 2
    windowed = evaluate_rule(RULE, state_of(run, 128, workers=2, profiled=False), RuleHistory())
    assert windowed.firing is None or abs(windowed.firing.value - optimum(2)) > 20
