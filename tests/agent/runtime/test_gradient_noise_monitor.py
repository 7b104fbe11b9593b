"""The gradient-noise-scale estimator recovers tr(Σ)/|G|² on synthetic gradients."""

import numpy as np
import pytest

from agent.runtime.monitors import GradientNoiseMonitor


def simulate(monitor, *, true_gradient, sigma, workers, per_worker, steps, rng):
    d = true_gradient.size
    for _ in range(steps):
        # Per-sample gradients g_i = G + ε_i with ε_i ~ N(0, σ² I): tr(Σ) = d σ².
        samples = true_gradient + sigma * rng.standard_normal((workers, per_worker, d))
        local_means = samples.mean(axis=1)
        global_mean = local_means.mean(axis=0)
        monitor.update(
            small_sq_norm=float(np.mean(np.sum(local_means**2, axis=1))),
            small_batch=per_worker,
            big_sq_norm=float(np.sum(global_mean**2)),
            big_batch=workers * per_worker,
        )


def test_noise_scale_matches_the_true_value():
    rng = np.random.default_rng(0)
    d, sigma = 50, 2.0
    g = rng.standard_normal(d) * 0.5
    monitor = GradientNoiseMonitor(smoothing=0.99)
    simulate(monitor, true_gradient=g, sigma=sigma, workers=4, per_worker=16, steps=3000, rng=rng)
    expected = d * sigma**2 / float(g @ g)
    values = monitor.values()
    assert values["gns"] == pytest.approx(expected, rel=0.15)
    assert values["grad_variance"] == pytest.approx(d * sigma**2, rel=0.15)
    assert values["grad_snr"] == pytest.approx(float(g @ g) / (d * sigma**2 / 64), rel=0.15)


def test_one_worker_gives_no_estimate():
    monitor = GradientNoiseMonitor()
    monitor.update(small_sq_norm=1.0, small_batch=32, big_sq_norm=1.0, big_batch=32)
    assert monitor.values() == {}
