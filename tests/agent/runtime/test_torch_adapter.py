"""The PyTorch adapter on its own (one process, no communicator): a step through it is
plain PyTorch's step on the mean loss, the optimizer's lazily built state exists from the
start, and a state copied to another model continues bit for bit."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agent.runtime.torch import TorchModel  # noqa: E402
from examples.digits_torch.train import build_model  # noqa: E402


def batch(seed: int, n: int = 32):
    rng = np.random.default_rng(seed)
    return rng.random((n, 64), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)


def adapter_for(model, optimizer, bucket_bytes=1024):
    adapter = TorchModel(model, optimizer, bucket_bytes=bucket_bytes)
    x, _ = batch(0)
    adapter.build(x, lambda flat: flat)
    return adapter


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_a_step_through_the_adapter_is_plain_pytorchs_step_on_the_mean_loss(kind):
    def optimizer_for(model):
        if kind == "sgd":
            return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return torch.optim.Adam(model.parameters(), lr=0.01)

    ours, reference = build_model(1), build_model(1)
    adapter = adapter_for(ours, optimizer_for(ours))
    plain = optimizer_for(reference)
    for step in range(3):
        x, y = batch(step)
        out = adapter.fused_step(x, y, len(x), 1.0, 0, True, False)
        plain.zero_grad()
        logits = reference(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y).long())
        logits = logits.detach()
        loss.backward()
        plain.step()
        assert out[0] / len(x) == pytest.approx(loss.item(), rel=1e-5)
        assert out[1] == float((logits.argmax(1).numpy() == y).sum())
        assert out[2] == pytest.approx(out[3], rel=1e-5)  # one worker: local norm = global
    for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("custom_loss", [False, True])
def test_gradients_are_those_of_the_summed_loss_over_the_global_batch_bit_for_bit(custom_loss):
    """The adapter starts backward from 1/B (and sums the default loss in the loss op):
    bit for bit the gradients of ``(sum of per-sample losses) / B`` through a division,
    also for a global batch that is not a power of two and for a loss of the user's."""

    def per_sample(logits, labels):
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none")

    global_batch = 96  # 1/96 is not exact in float32
    ours, reference = build_model(3), build_model(3)
    adapter = TorchModel(
        ours, torch.optim.SGD(ours.parameters(), lr=0.1), per_sample if custom_loss else None
    )
    x, y = batch(5, n=40)
    adapter.build(x, lambda flat: flat)
    flat = adapter.gradients(x, y, global_batch)
    logits = reference(torch.from_numpy(x))
    (per_sample(logits, torch.from_numpy(y).long()).sum() / global_batch).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in reversed(list(reference.parameters()))])
    np.testing.assert_array_equal(flat[: expected.numel()], expected.numpy())
    assert flat[-3] == pytest.approx(float(per_sample(logits, torch.from_numpy(y).long()).sum()))


def test_optimizer_state_exists_from_the_start_and_a_copied_state_continues_bit_for_bit():
    model = build_model(2)
    adapter = adapter_for(model, torch.optim.Adam(model.parameters(), lr=0.01))
    state = adapter.state()
    # 4 module tensors, then per parameter Adam's exp_avg, exp_avg_sq and step, all zero.
    assert len(state) == 4 + 4 * 3
    assert all(not np.any(a) for a in state[4:])
    for step in range(2):
        adapter.fused_step(*batch(step), 32, 1.0, 0, False, False)
    other_model = build_model(3)
    other = adapter_for(other_model, torch.optim.Adam(other_model.parameters(), lr=0.01))
    other.load_state(adapter.state())
    assert other.checksum() == adapter.checksum()
    x, y = batch(9)
    adapter.fused_step(x, y, 32, 1.0, 0, False, False)
    other.fused_step(x, y, 32, 1.0, 0, False, False)
    np.testing.assert_array_equal(other.weights(), adapter.weights())
    assert [a.tolist() for a in other.optimizer_state()] == [
        a.tolist() for a in adapter.optimizer_state()
    ]


def test_gradients_are_views_of_one_buffer_cut_into_buckets():
    model = build_model(4)
    adapter = adapter_for(model, torch.optim.SGD(model.parameters(), lr=0.1), bucket_bytes=1024)
    # Reverse order: the last layer's bias and weight (650 values) make the first bucket.
    assert adapter._buckets == [(0, 650), (650, 4810)]
    flat = adapter.gradients(*batch(5), 32)
    for p in model.parameters():
        assert p.grad.untyped_storage().data_ptr() == adapter._flat.untyped_storage().data_ptr()
    before = copy.deepcopy(adapter.weights())
    adapter.apply_gradients(flat[:-3])
    np.testing.assert_allclose(adapter.weights(), before - 0.1 * flat[:-3], rtol=1e-6, atol=1e-7)


def test_a_negative_bucket_size_is_refused_with_what_to_use():
    model = build_model(0)
    with pytest.raises(ValueError, match="bucket_bytes must be 0"):
        TorchModel(model, torch.optim.SGD(model.parameters(), lr=0.1), bucket_bytes=-1)


@pytest.mark.parametrize("size", [10, 4810, 8192, 8193, 100_000])
def test_squared_norms_are_the_sum_of_squares_on_either_side_of_the_numpy_limit(size):
    from agent.runtime.torch import _squared_norm

    values = np.random.default_rng(size).standard_normal(size).astype(np.float32)
    assert _squared_norm(values) == pytest.approx(
        float(np.sum(values.astype(np.float64) ** 2)), rel=1e-4
    )
