"""Checkpoints on the PyTorch runtime hold the whole training state (the module's and the
optimizer's state, the step, the data position): a run resumed from one, even with
another number of workers, continues exactly where the first run went on."""

from __future__ import annotations

import json

import pytest

from agent.local import job_series, run_workers

MODULE = "examples.digits_torch.train"


def test_a_run_resumed_from_a_checkpoint_continues_as_the_original_did(tmp_path):
    hp = {
        "batch_size": 64,
        "lr": 0.05,
        "steps": 40,
        "log_every": 10,
        "seed": 5,
        "checkpoint_every": 20,
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }
    original = run_workers(2, hp, module=MODULE)
    folder = tmp_path / "ckpt" / "step-000000020"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["step"] == 20 and meta["batch_size"] == 64
    # 20 steps of 64 out of 1437 samples: the next global batch starts at 1280.
    assert (meta["epoch"], meta["position"]) == (0, 1280)

    resumed = run_workers(
        1,
        {k: v for k, v in hp.items() if k != "checkpoint_every"} | {"resume_from": str(folder)},
        module=MODULE,
    )
    before, after = job_series(original[0], "loss"), job_series(resumed[0], "loss")
    assert sorted(after) == [30, 40]
    for step in after:
        # Same weights, momentum, data position and lr: the same losses (float32
        # summation order aside); a momentum reset or a skipped batch would show here.
        assert after[step] == pytest.approx(before[step], rel=2e-3), step
    assert job_series(resumed[0], "val_accuracy")[40] == pytest.approx(
        job_series(original[0], "val_accuracy")[40], abs=0.01
    )
