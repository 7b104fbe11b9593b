"""The torch runtime's GPU path (gradients in one flat tensor buffer, bucket allreduces
handed to the collective library as DLPack tensors) run on the CPU: with
ADAPTRAIN_TORCH_GRADS_ON_DEVICE=always a model on the CPU takes the same code path over
host tensors, so the plumbing (buckets, the last bucket through the host buffer, the
norms) is checked without a GPU. On a GPU the tensors are CUDA tensors and the library
stages them (scripts/gpu_check)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.local import job_series, run_workers

torch = pytest.importorskip("torch")

from agent.runtime import torch_grads  # noqa: E402
from agent.runtime.torch import TorchModel  # noqa: E402
from examples.digits_torch.train import build_model  # noqa: E402

MODULE = "examples.digits_torch.train"
HP = {"batch_size": 64, "lr": 0.05, "steps": 30, "log_every": 10, "seed": 3}


def checksums(messages: list[dict]) -> dict[int, float]:
    """The rank's own parameter checksum per step."""
    return {
        p["step"]: p["value"]
        for m in messages
        if m["type"] == "metrics"
        for p in m["points"]
        if p["name"] == "param_checksum"
    }


@pytest.mark.parametrize("bucket_mb", [0.001, 0])
def test_gradients_in_a_tensor_buffer_train_exactly_as_the_host_buffer(monkeypatch, bucket_mb):
    hp = {**HP, "bucket_mb": bucket_mb}
    monkeypatch.setenv(torch_grads.ENV, "off")
    host = run_workers(2, hp, module=MODULE)
    monkeypatch.setenv(torch_grads.ENV, "always")
    tensors = run_workers(2, hp, module=MODULE)
    assert sorted(checksums(host[0])) == [10, 20, 30]
    for rank in (0, 1):
        # Same sums in the same order: the same model, bit for bit.
        assert checksums(tensors[rank]) == checksums(host[rank])
        assert job_series(tensors[rank], "loss") == job_series(host[rank], "loss")
    gns_host, gns_tensors = job_series(host[0], "gns"), job_series(tensors[0], "gns")
    assert sorted(gns_tensors) == sorted(gns_host)
    for step in gns_host:  # the norms come from torch.dot instead of numpy.dot
        assert gns_tensors[step] == pytest.approx(gns_host[step], rel=1e-3)


def test_the_adapter_points_every_grad_into_the_tensor_buffer(monkeypatch):
    monkeypatch.setenv(torch_grads.ENV, "always")
    model = build_model(1)
    adapter = TorchModel(model, torch.optim.SGD(model.parameters(), lr=0.1), bucket_bytes=1024)
    rng = np.random.default_rng(0)
    x = rng.random((16, 64), dtype=np.float32)
    y = rng.integers(0, 10, 16).astype(np.int32)
    adapter.build(x, lambda flat: flat)
    flat = adapter._on_device.flat
    for p in model.parameters():
        assert p.grad.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    grads = adapter.gradients(x, y, len(x))  # the host copy of what backward wrote
    np.testing.assert_array_equal(grads[: flat.numel()], flat.numpy())
    assert np.abs(grads[: flat.numel()]).sum() > 0


def test_a_bad_setting_says_what_to_use(monkeypatch):
    monkeypatch.setenv(torch_grads.ENV, "gpu")
    with pytest.raises(
        ValueError, match="ADAPTRAIN_TORCH_GRADS_ON_DEVICE='gpu'.*auto, off, always"
    ):
        torch_grads.mode()
