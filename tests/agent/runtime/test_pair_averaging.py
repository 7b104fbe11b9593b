"""Pair averaging (AD-PSGD) on real worker processes: each worker averages its model with
one random peer's, fetched peer-to-peer from the native library, and the job learns
digits; switching to S-SGD then makes every worker's model identical."""

from __future__ import annotations

from agent.local import LocalJob, job_series, run_workers


def test_pair_averaging_learns_digits_with_three_workers():
    hp = {
        "batch_size": 64,
        "lr": 0.05,
        "steps": 500,
        "log_every": 50,
        "seed": 5,
        "monitor_every": 0,
    }
    messages = run_workers(3, hp, strategy="pair")
    assert job_series(messages[0], "val_accuracy")[500] >= 0.95
    losses = job_series(messages[0], "loss")
    assert losses[500] < 0.25 * losses[50]
    # Workers hold different (but close) models: they only ever average in pairs.
    checksums = [
        {
            p["step"]: p["value"]
            for m in messages[r]
            if m["type"] == "metrics"
            for p in m["points"]
            if p["name"] == "param_checksum"
        }
        for r in range(3)
    ]
    assert any(len({c[step] for c in checksums}) > 1 for step in checksums[0])


def test_switching_from_pair_to_ssgd_makes_the_models_identical():
    with LocalJob(
        "examples.digits.train",
        {"steps": 10**6, "log_every": 10, "seed": 6, "monitor_every": 0},
        workers=2,
        batch_size=64,
        lr=0.05,
        strategy="pair",
    ) as job:
        job.wait_for(
            lambda a, m: (
                m["type"] == "metrics"
                and any(p["name"] == "loss" and p["step"] >= 50 for p in m["points"])
            )
        )
        command = job.command("set_strategy", "ssgd")
        applied = [
            job.wait_for(lambda a, m: m["type"] == "applied" and m["id"] == command)
            for _ in range(2)
        ]
        switched = {m["step"] for _, m in applied}
        assert len(switched) == 1
        step = switched.pop()
        job.wait_for(
            lambda a, m: (
                m["type"] == "metrics"
                and any(p["name"] == "loss" and p["step"] >= step + 30 for p in m["points"])
            )
        )
        job.command("stop")
        assert set(job.wait(120).values()) == {0}
    sums: dict[int, set[float]] = {}
    for messages in job.messages.values():
        for m in messages:
            for p in m.get("points", []):
                if p["name"] == "param_checksum" and p["step"] > step:
                    sums.setdefault(p["step"], set()).add(p["value"])
    assert sums and all(len(values) == 1 for values in sums.values())
