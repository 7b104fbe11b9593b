"""Training monitors computed from quantities S-SGD already has at hand.

Gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch
Training", appendix A). With data parallelism each worker holds the mean gradient of
its own share of the batch (``B_small`` samples) and, after the allreduce, everyone
holds the mean gradient of the whole batch (``B_big`` samples). From the squared norms
of the two,

    |G|²  ≈ (B_big·|G_big|² − B_small·|G_small|²) / (B_big − B_small)
    tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)

are unbiased estimates of the true gradient's squared norm and of the per-sample
gradient covariance's trace. Each is noisy, so both are smoothed (an exponential moving
average with bias correction) before taking the ratio ``B_noise = tr(Σ) / |G|²``, the
batch size at which the gradient's noise and signal are about equal. Reported as
``gns``; ``grad_variance`` is the smoothed tr(Σ) and ``grad_snr`` the batch gradient's
signal-to-noise ratio ``|G|² / (tr(Σ) / B_big)``. No forward or backward pass is
added: the cost is two dot products and one scalar in the fused allreduce.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Ema:
    """An exponential moving average with bias correction (updated by the monitor)."""

    decay: float
    value: float = 0.0
    weight: float = 0.0

    def get(self) -> float | None:
        return self.value / self.weight if self.weight > 0 else None


class GradientNoiseMonitor:
    def __init__(self, smoothing: float = 0.95):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError("smoothing must be in [0, 1)")
        self._signal = _Ema(smoothing)
        self._noise = _Ema(smoothing)
        self._big_batch = 0.0

    def update(
        self, *, small_sq_norm: float, small_batch: float, big_sq_norm: float, big_batch: float
    ) -> None:
        """One observation: mean squared norm of the workers' local mean gradients over
        ``small_batch`` samples each, and the squared norm of the global mean gradient."""
        if not 0 < small_batch < big_batch:
            return  # one worker (or empty shards): the two batch sizes must differ
        signal = (big_batch * big_sq_norm - small_batch * small_sq_norm) / (big_batch - small_batch)
        noise = (small_sq_norm - big_sq_norm) / (1.0 / small_batch - 1.0 / big_batch)
        # _Ema.update's arithmetic written out: this runs every step (monitor interval 1),
        # where two method calls cost as much as the estimate itself.
        s, n = self._signal, self._noise
        decay, keep = s.decay, 1.0 - s.decay
        s.value = decay * s.value + keep * signal
        s.weight = decay * s.weight + keep
        n.value = decay * n.value + keep * noise
        n.weight = decay * n.weight + keep
        self._big_batch = big_batch

    def values(self) -> dict[str, float]:
        signal, noise = self._signal.get(), self._noise.get()
        if signal is None or noise is None or signal <= 0 or noise <= 0:
            return {}
        return {
            "gns": noise / signal,
            "grad_variance": noise,
            "grad_snr": signal / (noise / self._big_batch),
        }

    def state(self) -> list[float]:
        """The smoothed estimates, for a joiner to continue from (see load_state)."""
        return [
            self._signal.value,
            self._signal.weight,
            self._noise.value,
            self._noise.weight,
            self._big_batch,
        ]

    def load_state(self, state: list[float]) -> None:
        (
            self._signal.value,
            self._signal.weight,
            self._noise.value,
            self._noise.weight,
            self._big_batch,
        ) = (float(v) for v in state)
