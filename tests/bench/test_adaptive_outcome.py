"""bench.adaptive_outcome end to end in a tiny configuration: real workers (the runtime,
native allreduce), the policy engine answering their reports with commands; the JSON
lines carry the fields the doc's tables and plots are made from."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.adaptive_outcome import goodput_policy, parse_systems
from bench.policy_driver import PolicyDriver

ROOT = Path(__file__).resolve().parents[2]


def test_batch_experiment_runs_end_to_end_and_the_policy_grows_the_batch(tmp_path):
    command = [sys.executable, "-m", "bench.adaptive_outcome", "--json", "--seeds", "1"]
    command += ["--batches", "32", "--lr-scaling", "sqrt", "--samples", "4000"]
    command += ["--max-samples", "3000", "--eval-every", "1000", "--target", "0.3"]
    command += ["--log-every", "2", "--systems", "fixed,gns"]
    try:
        import matplotlib  # noqa: F401

        command += ["--plot", str(tmp_path)]
    except ImportError:
        pass
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    fixed, adaptive, summary = rows
    assert (fixed["system"], fixed["batch"], fixed["lr_scaling"]) == ("fixed", 32, "none")
    assert (adaptive["system"], adaptive["batch"]) == ("adaptive_sqrt", 32)
    for row in (fixed, adaptive):
        assert row["experiment"] == "batch" and row["target"] == 0.3
        assert row["per_seed_samples_to_target"][0] is not None  # 0.3 of 10 classes: reached
        assert 0 < row["seconds_to_target"] <= row["seconds_to_target_range"][1]
        assert 0.3 <= row["final_accuracy"] <= 1.0
        samples = [point[0] for point in row["curves"][0]]
        assert samples == sorted(samples) and samples[-1] >= 3000
    # The fixed run never changes its batch; the policy doubles it (the gradient noise
    # scale of this task is well above 2 × 32 from the start) and says when.
    assert fixed["final_batch"] == 32 and fixed["per_seed_batch_changes"] == [[]]
    changes = adaptive["per_seed_batch_changes"][0]
    assert changes and changes[0][1] == 64
    assert adaptive["final_batch"] > 32
    assert {b for _, _, b in adaptive["batch_curves"][0]} >= {32, 64}
    assert summary["fixed_median_s"] == fixed["seconds_to_target"]
    assert summary["adaptive_sqrt_over_best_fixed"] == pytest.approx(
        adaptive["seconds_to_target"] / fixed["seconds_to_target"], rel=1e-2
    )
    if "--plot" in command:
        assert (tmp_path / "adaptive_batch.png").stat().st_size > 1000


def test_systems_option_takes_a_subset_in_order_and_refuses_unknown_names():
    assert parse_systems("goodput, fixed,goodput") == ("goodput", "fixed")
    with pytest.raises(ValueError, match="unknown: gnss"):
        parse_systems("fixed,gnss")
    with pytest.raises(ValueError):
        parse_systems(" , ")


def _report(step: int, batch: int, gns: float) -> dict:
    """A whole-job report as rank 0 sends it (trainer._report_window), for two workers
    whose step costs 2 ms of collectives and 1 ms + 0.01 ms per local sample of compute."""
    compute = 1e-3 + 1e-5 * batch / 2
    return {
        "loss": 1.0,
        "throughput": batch / (compute + 2e-3),
        "batch_size": batch,
        "lr": 0.05,
        "workers": 2,
        "step_time": compute + 2e-3,
        "compute_time": compute,
        "comm_time": 2e-3,
        "gns": gns,
    }


def test_goodput_policy_fires_from_the_reports_the_runtime_sends_as_the_engine_says():
    """The benchmark's path into the engine: the driver turns rank 0's whole-job reports
    into the job state optimize_goodput fits from; the rule waits for its interval, then
    asks for a larger batch (noise scale 4,000 ≫ 64), at most 4× at once and within bounds."""
    policy = goodput_policy(every_steps=20, min_batch=64, max_batch=4096)
    driver = PolicyDriver(policy, batch_size=64, lr=0.05, workers=2)
    fired = []
    for step in range(5, 40, 5):
        for firing in driver.observe(step, float(step), 0.0, _report(step, 64, 4000.0)):
            fired.append((step, firing))
    assert [step for step, _ in fired] == [20]
    firing = fired[0][1]
    assert firing.action_type == "set_batch_size" and firing.value == 256
    assert firing.inputs["predicted_gain"] > 0.05
    # Fitted on one batch only, compute is taken as proportional to the batch: with the
    # fixed 2 ms of collectives the best batch is √(φ·s·K/b) = √(4000·2e-3·2/1e-5) = 1265,
    # clamped to 4 × 64.
    assert firing.inputs["gns_used"] == pytest.approx(4000.0)
    assert policy.window == 10  # the engine's default
    assert goodput_policy(every_steps=20, min_batch=64, max_batch=4096, window=40).window == 40
    # At a bound nothing is asked: 4096 is the policy's max.
    driver = PolicyDriver(policy, batch_size=4096, lr=0.05, workers=2)
    for step in range(5, 60, 5):
        assert driver.observe(step, float(step), 0.0, _report(step, 4096, 1e6)) == []
