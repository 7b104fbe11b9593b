"""The runtime's S-SGD on real worker processes (examples.digits over the native ring):
N workers follow single-process training on the same global batch, and report the
gradient noise scale."""

from __future__ import annotations

import pytest

from agent.local import job_series, run_workers


@pytest.fixture(scope="module")
def runs():
    hp = {"batch_size": 64, "lr": 0.05, "steps": 60, "log_every": 10, "seed": 3}
    return {1: run_workers(1, hp), 2: run_workers(2, hp)}


def test_two_workers_follow_single_process_training_on_the_same_global_batch(runs):
    single = job_series(runs[1][0], "loss")
    double = job_series(runs[2][0], "loss")
    assert sorted(single) == sorted(double) == list(range(10, 61, 10))
    for step in single:
        # Same samples, same initial weights, averaged gradients: only float32 summation
        # order differs, so the mean loss per window agrees to about 1e-4 relative.
        assert double[step] == pytest.approx(single[step], rel=2e-3), step
    assert job_series(runs[1][0], "val_accuracy")[60] == pytest.approx(
        job_series(runs[2][0], "val_accuracy")[60], abs=0.01
    )


def test_gradient_noise_scale_is_reported_with_two_workers(runs):
    gns = job_series(runs[2][0], "gns")
    assert gns and all(v > 0 for v in gns.values())
    assert job_series(runs[2][0], "grad_snr") and job_series(runs[2][0], "compute_time")
    assert not job_series(runs[1][0], "gns")  # one worker cannot estimate it


def test_the_one_call_step_does_what_the_two_call_step_does(runs):
    # S-SGD runs as one compiled call per step (gradients, allreduce from inside the graph
    # with the command agreement in the same buffer, update); `fused_step: false` keeps
    # the two calls with the allreduce between them. Same arithmetic, same training.
    hp = {
        "batch_size": 64,
        "lr": 0.05,
        "steps": 60,
        "log_every": 10,
        "seed": 3,
        "fused_step": False,
    }
    two_calls = run_workers(2, hp)

    def checksums(messages):
        return {
            p["step"]: p["value"]
            for m in messages
            if m["type"] == "metrics"
            for p in m["points"]
            if p["name"] == "param_checksum"
        }

    for rank in (0, 1):
        fused, unfused = checksums(runs[2][rank]), checksums(two_calls[rank])
        assert sorted(fused) == sorted(unfused) == list(range(10, 61, 10))
        for step in fused:
            assert fused[step] == pytest.approx(unfused[step], rel=1e-4, abs=1e-3), (rank, step)
    assert job_series(two_calls[0], "gns")[60] == pytest.approx(
        job_series(runs[2][0], "gns")[60], rel=0.05
    )
