"""The PyTorch runtime's S-SGD on real worker processes (examples.digits_torch over the
native ring): N workers follow single-process training on the same global batch, with the
gradients in one bucket or in several overlapped with backward, and report the gradient
noise scale; a script's own step stays in sync through the building blocks."""

from __future__ import annotations

import pytest

from agent.local import job_series, run_workers

MODULE = "examples.digits_torch.train"
HP = {"batch_size": 64, "lr": 0.05, "steps": 60, "log_every": 10, "seed": 3}


def per_rank(messages: list[dict], name: str) -> dict[int, float]:
    return {
        p["step"]: p["value"]
        for m in messages
        if m["type"] == "metrics"
        for p in m["points"]
        if p["name"] == name
    }


@pytest.fixture(scope="module")
def runs():
    return {
        1: run_workers(1, HP, module=MODULE),
        2: run_workers(2, HP, module=MODULE),
        # Buckets of 1 KB: the digits model's gradients go as two allreduces, the first
        # started from a gradient hook while backward still runs.
        "buckets": run_workers(2, {**HP, "bucket_mb": 0.001}, module=MODULE),
        "two_calls": run_workers(2, {**HP, "fused_step": False}, module=MODULE),
    }


def test_two_workers_follow_single_process_training_on_the_same_global_batch(runs):
    single = job_series(runs[1][0], "loss")
    assert sorted(single) == list(range(10, 61, 10))
    for key in (2, "buckets", "two_calls"):
        double = job_series(runs[key][0], "loss")
        assert sorted(double) == sorted(single), key
        for step in single:
            # Same samples, same initial weights, summed gradients: only float32
            # summation order differs.
            assert double[step] == pytest.approx(single[step], rel=2e-3), (key, step)
        assert job_series(runs[key][0], "val_accuracy")[60] == pytest.approx(
            job_series(runs[1][0], "val_accuracy")[60], abs=0.01
        )
    assert single[60] < 0.5 * single[10]


def test_workers_hold_bit_identical_models_whatever_the_bucketing(runs):
    for key in (2, "buckets", "two_calls"):
        sums = [per_rank(runs[key][r], "param_checksum") for r in (0, 1)]
        assert sorted(sums[0]) == list(range(10, 61, 10)), key
        assert sums[0] == sums[1], key
    # One bucket or two: the same sums in the same order, the same model.
    one, two = (
        per_rank(runs[2][0], "param_checksum"),
        per_rank(runs["buckets"][0], "param_checksum"),
    )
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-3), step


def test_monitors_report_the_tensorflow_runtime_metric_names(runs):
    for name in ("gns", "grad_variance", "grad_snr"):
        values = job_series(runs[2][0], name)
        assert values and all(v > 0 for v in values.values()), name
    for name in ("throughput", "compute_time", "comm_time", "step_time", "lr", "workers"):
        assert job_series(runs[2][0], name), name
    assert not job_series(runs[1][0], "gns")  # one worker cannot estimate it
    # The two-call path computes the same norms from the same gradients.
    assert job_series(runs["two_calls"][0], "gns")[60] == pytest.approx(
        job_series(runs[2][0], "gns")[60], rel=0.05
    )


def test_own_training_step_keeps_workers_identical_through_the_building_blocks():
    messages = run_workers(2, {"steps": 120}, module="tests.support.custom_step_worker_torch")
    sums = [per_rank(messages[r], "param_checksum") for r in (0, 1)]
    assert sorted(sums[0]) == list(range(10, 121, 10))
    # Different initial seeds, yet identical weights: broadcast, then averaged gradients.
    assert all(sums[0][s] == sums[1][s] for s in sums[0])
    losses = per_rank(messages[0], "loss")
    assert losses[120] < 0.5 * losses[10]
