"""Each synchronisation strategy trains examples.digits_torch to the example's goal
(≥ 95 % test accuracy on held-out digits) with several workers, on the PyTorch runtime.
SMA and pair averaging (each worker steps with its own share's gradient) are given
1,000 steps: at 500 they end within a point of the goal, on either side of it by seed."""

from __future__ import annotations

import pytest

from agent.local import job_series, run_workers


@pytest.mark.parametrize(
    "strategy, workers, steps", [("ssgd", 2, 500), ("sma", 2, 1000), ("pair", 2, 1000)]
)
def test_strategy_reaches_95_percent_test_accuracy_on_digits(strategy, workers, steps):
    hp = {
        "batch_size": 64,
        "lr": 0.05,
        "steps": steps,
        "log_every": steps // 10,
        "seed": 7,
        "monitor_every": 0,
    }
    messages = run_workers(workers, hp, strategy=strategy, module="examples.digits_torch.train")
    accuracy = job_series(messages[0], "val_accuracy")
    assert accuracy[steps] >= 0.95, accuracy
    losses = job_series(messages[0], "loss")
    assert losses[steps] < 0.25 * losses[steps // 10]
