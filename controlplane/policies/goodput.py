"""The goodput model of Pollux (Qiao et al., OSDI'21) as pure functions: how much a job
gains from a batch size and a worker count, fitted from what its workers report.

*Statistical efficiency* says how much training progress one sample buys at global batch
``M`` relative to the batch ``M0`` the learning rate was tuned for: with the gradient noise
scale φ (McCandlish et al. 2018; the runtime's ``gns`` metric), E(M) = (φ + M0) / (φ + M).
A batch far below φ wastes nothing; one far above it buys little per sample.

*Throughput* comes from a step-time model fitted by least squares to the reported
``compute_time`` and ``comm_time`` against the local batch ``m``, the workers ``K`` and the
nodes ``N``: T_grad(m) = α + β·m, and T_sync(K, N) = 0 for one worker, else
α_s + β_s·(K − 2) with separate coefficients within one node and across nodes (a ring
pays a latency per hop). Computation and communication overlap as
T = (T_grad^γ + T_sync^γ)^(1/γ), γ ≥ 1 (γ = 1: no overlap), fitted to ``step_time`` when
it is reported.

*Goodput* = throughput × efficiency = (K·m / T) × E(K·m), in M0-equivalent samples per
second; the best batch for K workers maximises it. Nothing here knows Django: the policy
engine, the cluster allocator and ``bench/provisioning_sim.py`` all use it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# γ is fitted on this grid (a one-dimensional search is robust where gradients are not).
_GAMMAS = np.linspace(1.0, 10.0, 91)
# The most candidate batch sizes best_batch evaluates (vectorised); beyond, a log grid.
_MAX_CANDIDATES = 200_000


class GoodputError(ValueError):
    """Measurements or arguments the model cannot use; the message says what to fix."""


def efficiency(batch: float | np.ndarray, *, gns: float, base_batch: float) -> float | np.ndarray:
    """Statistical efficiency E(M) = (φ + M0) / (φ + M) of global batch ``batch`` relative
    to ``base_batch`` (M0), given the gradient noise scale ``gns`` (φ ≥ 0)."""
    if not math.isfinite(gns) or gns < 0:
        raise GoodputError(f"gradient noise scale must be a finite number ≥ 0, not {gns!r}")
    if not base_batch > 0:
        raise GoodputError(f"base batch must be positive, not {base_batch!r}")
    return (gns + base_batch) / (gns + batch)


def adascale_gain(batch: float, *, gns: float, base_batch: float) -> float:
    """AdaScale's learning-rate gain when moving from ``base_batch`` to ``batch``: the
    number of base-batch steps one step at ``batch`` is worth, (φ + M0)/(φ + M) · M/M0,
    between 1 and M/M0 (Johnson et al. 2020, with the variance ratio written through φ)."""
    scale = batch / base_batch
    return float(efficiency(batch, gns=gns, base_batch=base_batch)) * scale


@dataclass(frozen=True)
class StepSample:
    """One measurement: seconds per step computing and in collectives (and in all, when
    known) at local batch ``local_batch`` with ``workers`` workers on ``nodes`` nodes."""

    local_batch: float
    workers: int
    nodes: int
    compute_time: float
    comm_time: float
    step_time: float | None = None


@dataclass(frozen=True)
class ProfilePoint:
    """One configuration's measurements summarised: the median times of its latest
    ``count`` measurements (as a :class:`StepSample`)."""

    sample: StepSample
    count: int


class StepProfile:
    """A job's step-time measurements over its whole run, per configuration (local batch,
    workers, nodes), as Pollux keeps them: a batch size measured once keeps informing the
    fit after the job has moved on, where a window of recent reports would forget it.

    Bounded: the latest ``keep`` measurements of each configuration and the ``max_configs``
    configurations seen most recently. Each point is the median of its configuration's
    times (robust to a report carrying a one-off cost, such as tracing a new batch shape,
    once a configuration has three or more)."""

    def __init__(self, *, keep: int = 20, max_configs: int = 64):
        if keep < 1 or max_configs < 1:
            raise GoodputError(f"keep and max_configs must be ≥ 1, got {keep}, {max_configs}")
        self.keep, self.max_configs = keep, max_configs
        # Insertion order is recency order: a configuration seen again moves to the end.
        self._configs: dict[tuple[float, int, int], list[StepSample]] = {}

    def add(self, sample: StepSample) -> None:
        key = (float(sample.local_batch), int(sample.workers), int(sample.nodes))
        kept = self._configs.pop(key, [])
        kept.append(sample)
        self._configs[key] = kept[-self.keep :]
        while len(self._configs) > self.max_configs:
            del self._configs[next(iter(self._configs))]

    def points(self) -> list[ProfilePoint]:
        out = []
        for (local_batch, workers, nodes), kept in self._configs.items():
            step_times = [s.step_time for s in kept if s.step_time is not None]
            out.append(
                ProfilePoint(
                    StepSample(
                        local_batch=local_batch,
                        workers=workers,
                        nodes=nodes,
                        compute_time=statistics.median(s.compute_time for s in kept),
                        comm_time=statistics.median(s.comm_time for s in kept),
                        step_time=statistics.median(step_times) if step_times else None,
                    ),
                    len(kept),
                )
            )
        return out


@dataclass(frozen=True)
class StepTimeModel:
    """T_grad(m) = alpha + beta·m; T_sync = 0 for one worker, else sync_alpha + sync_beta·(K−2)
    on one node and sync_alpha_x + sync_beta_x·(K−2) across nodes; overlap exponent gamma."""

    alpha: float
    beta: float
    sync_alpha: float
    sync_beta: float
    sync_alpha_x: float
    sync_beta_x: float
    gamma: float = 1.0

    def compute_time(self, local_batch: float | np.ndarray) -> float | np.ndarray:
        return self.alpha + self.beta * local_batch

    def sync_time(self, workers: int, nodes: int) -> float:
        if workers <= 1:
            return 0.0
        if nodes <= 1:
            return max(0.0, self.sync_alpha + self.sync_beta * (workers - 2))
        return max(0.0, self.sync_alpha_x + self.sync_beta_x * (workers - 2))

    def step_time(
        self, local_batch: float | np.ndarray, workers: int, nodes: int
    ) -> float | np.ndarray:
        grad = np.maximum(np.asarray(self.compute_time(local_batch), dtype=float), 1e-12)
        sync = self.sync_time(workers, nodes)
        g = self.gamma
        out = (grad**g + sync**g) ** (1.0 / g)
        return float(out) if np.ndim(out) == 0 else out


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares intercept and slope of y against x, both kept ≥ 0 (times do not
    shrink with more work); with one distinct x, the mean as intercept."""
    if len(np.unique(x)) < 2:
        return float(np.mean(y)), 0.0
    design = np.column_stack([np.ones_like(x), x])
    (intercept, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
    if slope < 0:
        return float(np.mean(y)), 0.0
    if intercept < 0:
        # Through the origin: the best slope with no fixed cost.
        return 0.0, float(np.dot(x, y) / np.dot(x, x))
    return float(intercept), float(slope)


def fit_step_time(
    samples: Sequence[StepSample], *, single_batch_fixed_share: float = 0.0
) -> StepTimeModel:
    """Fit a :class:`StepTimeModel` to measurements (least squares).

    With one local batch only, ``single_batch_fixed_share`` of the mean compute time is
    taken as a fixed cost and the rest as proportional to the batch. 0 (the default) is
    the cautious guess: a larger batch is no cheaper per sample. Pollux (AdaptDL's
    ``fit_perf_params``) takes half, optimistic about a larger batch, so that a job
    started small moves and measures a second batch size. With one worker count only,
    the sync time is that count's mean; a layout never seen (one node vs several)
    borrows the other's coefficients."""
    if not 0.0 <= single_batch_fixed_share < 1.0:
        raise GoodputError(
            f"single_batch_fixed_share must be in [0, 1), not {single_batch_fixed_share!r}"
        )
    if not samples:
        raise GoodputError("no step-time measurements to fit (compute_time and comm_time)")
    for s in samples:
        if not (s.local_batch > 0 and s.workers >= 1 and s.nodes >= 1):
            raise GoodputError(
                f"a measurement needs local_batch > 0, workers ≥ 1 and nodes ≥ 1, got {s!r}"
            )
        values = (s.compute_time, s.comm_time) + (() if s.step_time is None else (s.step_time,))
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise GoodputError(f"times must be finite and ≥ 0, got {s!r}")
    m = np.array([s.local_batch for s in samples], dtype=float)
    grad = np.array([s.compute_time for s in samples], dtype=float)
    if len(np.unique(m)) < 2:
        alpha = single_batch_fixed_share * float(np.mean(grad))
        beta = float(np.mean(grad - alpha) / m[0])
    else:
        alpha, beta = _line(m, grad)
    within = [s for s in samples if s.workers > 1 and s.nodes <= 1]
    across = [s for s in samples if s.workers > 1 and s.nodes > 1]

    def sync_fit(group: list[StepSample]) -> tuple[float, float] | None:
        if not group:
            return None
        k = np.array([s.workers - 2 for s in group], dtype=float)
        return _line(k, np.array([s.comm_time for s in group], dtype=float))

    fit_in, fit_x = sync_fit(within), sync_fit(across)
    fit_in = fit_in or fit_x or (0.0, 0.0)
    fit_x = fit_x or fit_in
    model = StepTimeModel(alpha, beta, fit_in[0], fit_in[1], fit_x[0], fit_x[1])
    timed = [s for s in samples if s.step_time is not None and s.workers > 1]
    if timed:
        errors: list[float] = []
        for gamma in _GAMMAS:
            candidate = StepTimeModel(alpha, beta, *fit_in, *fit_x, gamma=float(gamma))
            predicted = [
                float(candidate.step_time(s.local_batch, s.workers, s.nodes)) for s in timed
            ]
            errors.append(
                sum((p - (s.step_time or 0.0)) ** 2 for p, s in zip(predicted, timed, strict=True))
            )
        model = StepTimeModel(
            alpha, beta, *fit_in, *fit_x, gamma=float(_GAMMAS[int(np.argmin(errors))])
        )
    return model


@dataclass(frozen=True)
class JobModel:
    """What the goodput of one job depends on: its step times, its noise scale and the batch
    its learning rate was set for."""

    step_time: StepTimeModel
    gns: float
    base_batch: float

    def throughput(
        self, batch: float | np.ndarray, workers: int, nodes: int = 1
    ) -> float | np.ndarray:
        """Samples per second at global batch ``batch``."""
        return batch / self.step_time.step_time(
            np.asarray(batch, dtype=float) / workers, workers, nodes
        )

    def goodput(
        self, batch: float | np.ndarray, workers: int, nodes: int = 1
    ) -> float | np.ndarray:
        """Throughput × statistical efficiency (base-batch-equivalent samples per second)."""
        return self.throughput(batch, workers, nodes) * efficiency(
            batch, gns=self.gns, base_batch=self.base_batch
        )


@dataclass(frozen=True)
class BatchChoice:
    batch: int
    goodput: float
    throughput: float
    efficiency: float


def best_batch(
    job: JobModel,
    workers: int,
    nodes: int = 1,
    *,
    min_batch: int = 1,
    max_batch: int,
    max_local_batch: int | None = None,
) -> BatchChoice:
    """The global batch in [min_batch, max_batch] (and at most ``max_local_batch`` per
    worker, the memory bound) with the highest goodput for ``workers`` workers."""
    if workers < 1 or nodes < 1:
        raise GoodputError(f"workers and nodes must be ≥ 1, got {workers} and {nodes}")
    high = max_batch if max_local_batch is None else min(max_batch, max_local_batch * workers)
    low = max(1, min_batch)
    if high < low:
        raise GoodputError(
            f"no batch size fits: the bounds give [{low}, {high}] for {workers} worker(s)"
        )
    if high - low + 1 <= _MAX_CANDIDATES:
        candidates = np.arange(low, high + 1, dtype=float)
    else:
        candidates = np.unique(np.round(np.geomspace(low, high, _MAX_CANDIDATES)))
    values = np.asarray(job.goodput(candidates, workers, nodes), dtype=float)
    i = int(np.argmax(values))
    batch = int(candidates[i])
    return BatchChoice(
        batch=batch,
        goodput=float(values[i]),
        throughput=float(job.throughput(batch, workers, nodes)),
        efficiency=float(efficiency(batch, gns=job.gns, base_batch=job.base_batch)),
    )
