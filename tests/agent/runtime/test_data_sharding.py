"""Global batches are split across workers so that within an epoch every sample is
used exactly once, whatever the worker count and even when the batch size changes."""

import numpy as np
import pytest

from agent.runtime import GlobalBatchSampler


@pytest.mark.parametrize(
    "n_samples, size, batch_sizes",
    [
        (1437, 2, [32] * 10 + [64] * 10 + [128] * 20),
        (1000, 3, [7, 33, 64, 1, 500, 250]),
        (10, 4, [3, 3, 3, 3]),
    ],
)
def test_each_epoch_covers_every_sample_exactly_once(n_samples, size, batch_sizes):
    sampler = GlobalBatchSampler(n_samples, seed=5)
    seen = {0: []}
    i = 0
    while sampler.epoch < 2:
        batch_size = batch_sizes[i % len(batch_sizes)]
        i += 1
        epoch = sampler.epoch if sampler.position < n_samples else sampler.epoch + 1
        batch = sampler.next(batch_size)
        shards = [GlobalBatchSampler.shard(batch, r, size) for r in range(size)]
        assert sum(len(s) for s in shards) == len(batch)
        assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
        seen.setdefault(epoch, []).extend(np.concatenate(shards).tolist())
    for epoch in (0, 1):
        assert sorted(seen[epoch]) == list(range(n_samples))


def test_every_worker_draws_the_same_global_batches():
    a, b = GlobalBatchSampler(500, seed=1), GlobalBatchSampler(500, seed=1)
    for bs in (32, 64, 100, 7):
        assert np.array_equal(a.next(bs), b.next(bs))


def test_empty_training_set_is_refused():
    with pytest.raises(ValueError, match="empty"):
        GlobalBatchSampler(0)
