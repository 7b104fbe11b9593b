"""The PyTorch synthetic CNN example trains with two workers, its gradients in two
buckets (the dense layer's 8.4 MB allreduced while the convolutions' backward runs),
and the two workers keep bit-identical models."""

from agent.local import job_series, run_workers


def test_synthetic_cnn_torch_learns_with_two_workers_and_overlapped_buckets():
    messages = run_workers(
        2,
        {"batch_size": 64, "lr": 0.01, "steps": 40, "log_every": 10, "samples": 512},
        module="examples.synthetic_cnn_torch.train",
    )
    loss = job_series(messages[0], "loss")
    accuracy = job_series(messages[0], "accuracy")
    assert sorted(loss) == [10, 20, 30, 40]
    assert loss[40] < loss[10]
    assert accuracy[40] > 0.3  # ten classes: chance is 0.1
    assert job_series(messages[0], "throughput")[40] > 0
    checksums = [
        {
            p["step"]: p["value"]
            for m in messages[rank]
            if m["type"] == "metrics"
            for p in m["points"]
            if p["name"] == "param_checksum"
        }
        for rank in (0, 1)
    ]
    assert sorted(checksums[0]) == [10, 20, 30, 40] and checksums[0] == checksums[1]
