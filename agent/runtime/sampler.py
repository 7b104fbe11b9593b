"""Which samples each worker trains on: global batches over seeded epochs, sharded by rank.

An epoch is a permutation of the training set, the same on every worker (seeded by the
epoch); the global batch is the next ``batch_size`` samples of it and worker *r* of *n*
takes every *n*-th of them from offset *r*. Within an epoch no sample is skipped or seen
twice, and the split is exact for any batch size and worker count, even when either
changes mid-epoch (the position in the epoch is all a new member needs to continue).
"""

from __future__ import annotations

import numpy as np


class GlobalBatchSampler:
    """Global batches over epochs: each epoch is a permutation seeded by (seed + epoch), the
    same on every worker; a batch never crosses an epoch boundary, so within an epoch every
    sample is used exactly once whatever the batch size, even when it changes mid-epoch."""

    def __init__(self, n_samples: int, seed: int = 0):
        if n_samples < 1:
            raise ValueError("the training set is empty")
        self.n_samples = n_samples
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._perm = np.random.default_rng(seed).permutation(n_samples)

    def next(self, batch_size: int) -> np.ndarray:
        if self.position >= self.n_samples:
            self.epoch += 1
            self.position = 0
            self._perm = np.random.default_rng(self.seed + self.epoch).permutation(self.n_samples)
        end = min(self.position + batch_size, self.n_samples)
        batch = self._perm[self.position : end]
        self.position = end
        return batch

    def state(self) -> tuple[int, int]:
        """(epoch, position): where the next global batch starts."""
        return self.epoch, self.position

    def seek(self, epoch: int, position: int) -> None:
        """Continue from a saved point (a checkpoint's data position)."""
        self.epoch = epoch
        self.position = position
        self._perm = np.random.default_rng(self.seed + epoch).permutation(self.n_samples)

    @staticmethod
    def shard(batch: np.ndarray, rank: int, size: int) -> np.ndarray:
        """This worker's share of a global batch: every size-th sample from offset rank."""
        return batch[rank::size]
