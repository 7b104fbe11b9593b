"""The goodput model (controlplane.policies.goodput): efficiency from the noise scale, the
step-time fit, goodput and the best batch, checked against hand-computed values and
against synthetic step times made from known parameters."""

import math

import numpy as np
import pytest

from controlplane.policies.goodput import (
    GoodputError,
    JobModel,
    StepSample,
    StepTimeModel,
    adascale_gain,
    best_batch,
    efficiency,
    fit_step_time,
)


def test_efficiency_is_one_at_the_base_batch_and_falls_as_the_batch_outgrows_the_noise_scale():
    assert efficiency(64, gns=100.0, base_batch=64) == 1.0
    # (100 + 64) / (100 + 256) = 164 / 356
    assert efficiency(256, gns=100.0, base_batch=64) == pytest.approx(164 / 356)
    # Below the base batch a sample is worth more: (100 + 64) / (100 + 16)
    assert efficiency(16, gns=100.0, base_batch=64) == pytest.approx(164 / 116)
    # No noise: a sample at batch M is worth M0/M.
    assert efficiency(128, gns=0.0, base_batch=32) == pytest.approx(0.25)
    assert np.allclose(
        efficiency(np.array([64.0, 256.0]), gns=100.0, base_batch=64), [1, 164 / 356]
    )


def test_efficiency_refuses_a_negative_noise_scale_or_base_batch():
    with pytest.raises(GoodputError, match="noise scale"):
        efficiency(64, gns=-1.0, base_batch=64)
    with pytest.raises(GoodputError, match="base batch"):
        efficiency(64, gns=1.0, base_batch=0)


def test_adascale_gain_lies_between_one_and_the_batch_ratio():
    # Batch ×4 with φ = 100, M0 = 64: 4 · 164/356
    assert adascale_gain(256, gns=100.0, base_batch=64) == pytest.approx(4 * 164 / 356)
    assert adascale_gain(256, gns=1e9, base_batch=64) == pytest.approx(4.0, rel=1e-6)
    assert adascale_gain(256, gns=0.0, base_batch=64) == pytest.approx(1.0)


def test_step_time_by_hand():
    model = StepTimeModel(0.01, 0.001, 0.02, 0.005, 0.05, 0.01, gamma=1.0)
    assert model.step_time(32, 1, 1) == pytest.approx(0.01 + 0.032)
    # 4 workers on one node: sync 0.02 + 0.005·2 = 0.03
    assert model.step_time(32, 4, 1) == pytest.approx(0.042 + 0.03)
    # 4 workers on two nodes: 0.05 + 0.01·2 = 0.07
    assert model.step_time(32, 4, 2) == pytest.approx(0.042 + 0.07)
    overlapped = StepTimeModel(0.01, 0.001, 0.02, 0.005, 0.05, 0.01, gamma=2.0)
    assert overlapped.step_time(32, 4, 1) == pytest.approx(math.hypot(0.042, 0.03))


def synthetic(truth, layouts, batches, rng, noise=0.0):
    samples = []
    for workers, nodes in layouts:
        for m in batches:
            grad = truth.compute_time(m) * (1 + noise * rng.standard_normal())
            sync = truth.sync_time(workers, nodes) * (1 + noise * rng.standard_normal())
            samples.append(
                StepSample(
                    local_batch=m,
                    workers=workers,
                    nodes=nodes,
                    compute_time=grad,
                    comm_time=sync,
                    step_time=truth.step_time(m, workers, nodes),
                )
            )
    return samples


def test_the_fit_recovers_known_parameters_from_exact_step_times():
    truth = StepTimeModel(0.012, 0.0007, 0.015, 0.004, 0.06, 0.02, gamma=2.5)
    layouts = [(1, 1), (2, 1), (3, 1), (4, 1), (4, 2), (6, 2), (8, 3)]
    fitted = fit_step_time(synthetic(truth, layouts, [8, 16, 32, 64], np.random.default_rng(0)))
    assert fitted.alpha == pytest.approx(0.012, rel=1e-6)
    assert fitted.beta == pytest.approx(0.0007, rel=1e-6)
    assert fitted.sync_alpha == pytest.approx(0.015, rel=1e-6)
    assert fitted.sync_beta == pytest.approx(0.004, rel=1e-6)
    assert fitted.sync_alpha_x == pytest.approx(0.06, rel=1e-6)
    assert fitted.sync_beta_x == pytest.approx(0.02, rel=1e-6)
    assert fitted.gamma == pytest.approx(2.5, abs=0.05)


def test_the_fit_is_close_under_measurement_noise():
    truth = StepTimeModel(0.02, 0.001, 0.03, 0.01, 0.08, 0.02, gamma=1.0)
    layouts = [(2, 1), (3, 1), (4, 1), (4, 2), (8, 2)]
    samples = synthetic(truth, layouts, [16, 32, 64, 128] * 5, np.random.default_rng(1), 0.03)
    fitted = fit_step_time(samples)
    for m, k, n in [(16, 2, 1), (128, 4, 1), (64, 8, 2)]:
        assert fitted.step_time(m, k, n) == pytest.approx(truth.step_time(m, k, n), rel=0.05)


def test_with_one_batch_and_one_worker_count_the_fit_is_cautious():
    # One local batch: compute taken as proportional to it; one K: its mean sync time.
    samples = [StepSample(32, 4, 1, 0.064, 0.02), StepSample(32, 4, 1, 0.064, 0.04)]
    fitted = fit_step_time(samples)
    assert fitted.alpha == 0.0 and fitted.beta == pytest.approx(0.002)
    assert fitted.sync_time(4, 1) == pytest.approx(0.03)
    # Across nodes was never seen: it borrows the one-node coefficients.
    assert fitted.sync_time(4, 2) == pytest.approx(0.03)
    assert fitted.step_time(64, 4, 1) == pytest.approx(0.128 + 0.03)


def test_with_one_batch_pollux_takes_half_the_compute_as_a_fixed_cost():
    # AdaptDL's fit_perf_params with one local batch: alpha_c = mean(compute) / 2.
    samples = [StepSample(32, 4, 1, 0.060, 0.02), StepSample(32, 4, 1, 0.068, 0.04)]
    fitted = fit_step_time(samples, single_batch_fixed_share=0.5)
    assert fitted.alpha == pytest.approx(0.032) and fitted.beta == pytest.approx(0.001)
    assert fitted.compute_time(64) == pytest.approx(0.096)  # not 0.128: cheaper per sample
    # With two batch sizes the share plays no part: the fit is the least-squares line.
    two = [StepSample(16, 4, 1, 0.03, 0.02), StepSample(32, 4, 1, 0.05, 0.02)]
    assert fit_step_time(two, single_batch_fixed_share=0.5) == fit_step_time(two)
    with pytest.raises(GoodputError, match="single_batch_fixed_share"):
        fit_step_time(samples, single_batch_fixed_share=1.0)


def test_the_fit_refuses_unusable_measurements():
    with pytest.raises(GoodputError, match="no step-time"):
        fit_step_time([])
    with pytest.raises(GoodputError, match="finite"):
        fit_step_time([StepSample(32, 2, 1, float("nan"), 0.01)])
    with pytest.raises(GoodputError, match="local_batch"):
        fit_step_time([StepSample(0, 2, 1, 0.1, 0.01)])


def test_goodput_is_throughput_times_efficiency_by_hand():
    job = JobModel(StepTimeModel(0.01, 0.001, 0.02, 0.0, 0.02, 0.0), gns=100.0, base_batch=64)
    # 2 workers, batch 128: local 64, T = 0.01 + 0.064 + 0.02 = 0.094
    assert job.throughput(128, 2) == pytest.approx(128 / 0.094)
    assert job.goodput(128, 2) == pytest.approx(128 / 0.094 * 164 / 228)


def test_best_batch_balances_fixed_costs_against_efficiency():
    # T = a + b·m + s with K workers; goodput(M) = M/(a + s + b·M/K) · (φ+M0)/(φ+M).
    # Setting its derivative to zero gives M* = sqrt(φ·(a + s)·K / b).
    step = StepTimeModel(0.02, 0.0005, 0.03, 0.0, 0.03, 0.0)
    job = JobModel(step, gns=400.0, base_batch=32)
    choice = best_batch(job, 4, max_batch=100_000)
    expected = math.sqrt(400.0 * 0.05 * 4 / 0.0005)
    assert abs(choice.batch - expected) <= 1
    assert choice.goodput == pytest.approx(float(job.goodput(choice.batch, 4)))
    assert choice.efficiency == pytest.approx((400 + 32) / (400 + choice.batch))
    # Bounds: the batch cap and the per-worker memory cap.
    assert best_batch(job, 4, max_batch=256).batch == 256
    assert best_batch(job, 4, max_batch=100_000, max_local_batch=50).batch == 200
    with pytest.raises(GoodputError, match="no batch size fits"):
        best_batch(job, 4, min_batch=300, max_batch=100_000, max_local_batch=50)


def test_the_best_batch_grows_with_the_noise_scale():
    step = StepTimeModel(0.02, 0.0005, 0.03, 0.0, 0.03, 0.0)
    small = best_batch(JobModel(step, gns=50.0, base_batch=32), 4, max_batch=100_000).batch
    large = best_batch(JobModel(step, gns=5000.0, base_batch=32), 4, max_batch=100_000).batch
    assert large > 5 * small
