"""Each synchronisation strategy trains examples.digits_torch to the example's goal
(≥ 95 % test accuracy on held-out digits) with several workers, on the PyTorch runtime."""

from __future__ import annotations

import pytest

from agent.local import job_series, run_workers


@pytest.mark.parametrize("strategy, workers", [("ssgd", 2), ("sma", 3), ("pair", 2)])
def test_strategy_reaches_95_percent_test_accuracy_on_digits(strategy, workers):
    hp = {
        "batch_size": 64,
        "lr": 0.05,
        "steps": 500,
        "log_every": 50,
        "seed": 7,
        "monitor_every": 0,
    }
    messages = run_workers(workers, hp, strategy=strategy, module="examples.digits_torch.train")
    accuracy = job_series(messages[0], "val_accuracy")
    assert accuracy[500] >= 0.95, accuracy
    losses = job_series(messages[0], "loss")
    assert losses[500] < 0.25 * losses[50]
