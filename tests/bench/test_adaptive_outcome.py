"""bench.adaptive_outcome end to end in a tiny configuration: real workers (the runtime,
native allreduce), the policy engine answering their reports with commands; the JSON
lines carry the fields the doc's tables and plots are made from."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_batch_experiment_runs_end_to_end_and_the_policy_grows_the_batch(tmp_path):
    command = [sys.executable, "-m", "bench.adaptive_outcome", "--json", "--seeds", "1"]
    command += ["--batches", "32", "--lr-scaling", "sqrt", "--samples", "4000"]
    command += ["--max-samples", "3000", "--eval-every", "1000", "--target", "0.3"]
    command += ["--log-every", "2"]
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
