"""Each synchronisation strategy trains examples.digits_torch to the example's goal
(≥ 95 % test accuracy on held-out digits) with several workers, on the PyTorch runtime.
S-SGD as the TensorFlow runtime's test trains it; SMA is given 1,000 steps (at 500 it
ends within a point of the goal); pair averaging runs as the TensorFlow runtime's
test_pair_averaging.py trains it (3 workers, seed 5)."""

from __future__ import annotations

import pytest

from agent.local import job_series, run_workers


@pytest.mark.parametrize(
    "strategy, workers, steps, seed",
    [("ssgd", 2, 500, 7), ("sma", 2, 1000, 7), ("pair", 3, 500, 5)],
)
def test_strategy_reaches_95_percent_test_accuracy_on_digits(strategy, workers, steps, seed):
    hp = {
        "batch_size": 64,
        "lr": 0.05,
        "steps": steps,
        "log_every": steps // 10,
        "seed": seed,
        "monitor_every": 0,
    }
    messages = run_workers(workers, hp, strategy=strategy, module="examples.digits_torch.train")
    accuracy = job_series(messages[0], "val_accuracy")
    assert accuracy[steps] >= 0.95, accuracy
    losses = job_series(messages[0], "loss")
    assert losses[steps] < 0.25 * losses[steps // 10]
