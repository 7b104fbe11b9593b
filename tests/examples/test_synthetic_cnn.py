"""The synthetic CNN example trains with two workers through the public runtime API."""

from agent.local import job_series, run_workers


def test_synthetic_cnn_learns_with_two_workers():
    messages = run_workers(
        2,
        {"batch_size": 64, "lr": 0.01, "steps": 40, "log_every": 10, "samples": 512},
        module="examples.synthetic_cnn.train",
    )
    loss = job_series(messages[0], "loss")
    accuracy = job_series(messages[0], "accuracy")
    assert sorted(loss) == [10, 20, 30, 40]
    assert loss[40] < loss[10]
    assert accuracy[40] > 0.3  # ten classes: chance is 0.1
    assert job_series(messages[0], "throughput")[40] > 0
