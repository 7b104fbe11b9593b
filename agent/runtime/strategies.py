"""Synchronisation strategies: how the workers' models stay together, one object each.

- **S-SGD** (:class:`SSGD`): every worker applies the same averaged gradient, so every
  worker holds the same model. Each computes the gradient of ``sum(loss) / B`` over its
  share of the global batch ``B``; fused into one buffer with the loss and
  correct-count sums, the gradients are allreduced (sum) by the native library, which
  gives exactly the gradient of the mean loss over the global batch, as in
  single-process training. The step also feeds the gradient-noise monitor.
- **SMA** (:class:`SMA`, KungFu's SynchronousAveragingOptimizer): each worker applies its
  own gradient, and every step the models are averaged and each is pulled a fraction
  ``sma_alpha`` towards the average — more exploration early in training.
- **Pair averaging** (:class:`Pair`, AD-PSGD, Lian et al. 2018; KungFu's
  PairAveragingOptimizer): each worker publishes its model, fetches one random peer's
  latest model without that peer taking part, averages the two and applies its own
  gradient — no collective over the model at all.

A job switches strategy by command at a step boundary, where every worker swaps the
trainer's strategy object at the same step (:meth:`Strategy.on_enter` does the
switch-in work). Strategies see the model only through the framework-neutral
:class:`~agent.runtime.adapter.ModelAdapter`; no TensorFlow here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from agent.protocol import vocabulary as v
from agent.runtime.commands import SLOTS_PER_RANK

if TYPE_CHECKING:
    from agent.runtime.adapter import ModelAdapter
    from agent.runtime.session import Session
    from agent.runtime.trainer import Trainer


class Strategy:
    """One trainer's way of taking a step together with the other workers."""

    name: ClassVar[str]

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.adapter = trainer.adapter
        self.session = trainer.session

    def on_enter(self) -> None:
        """The job switched to this strategy (every worker at the same step boundary)."""

    def step(
        self, x: np.ndarray, y: np.ndarray, global_batch: int, monitoring: bool, local_scale: float
    ) -> tuple[float, float, float]:
        """Train one step on this worker's share (x, y) of a global batch of
        ``global_batch`` samples; ``local_scale`` is global_batch / len(x); ``monitoring``:
        feed the gradient-noise monitor this step (only S-SGD has the averaged gradient it
        needs). Returns the global batch's loss sum and correct count, and the seconds
        spent communicating."""
        raise NotImplementedError


class SSGD(Strategy):
    name = "ssgd"

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        self.noise = trainer.noise
        self.agreement = trainer.agreement

    def on_enter(self) -> None:
        # S-SGD needs identical models and optimizer slots (momentum): finish SMA or pair
        # averaging with a full average of both.
        average_weights(self.adapter, self.session, alpha=1.0)
        average_optimizer_state(self.adapter, self.session)

    def step(self, x, y, global_batch, monitoring, local_scale):
        session = self.session
        comm = session.communicator
        if self.trainer.fused_step:
            # One compiled call: gradients, the allreduce (with the command agreement in
            # the same buffer) and the update.
            self.agreement.step_comm_s = 0.0
            out = self.adapter.fused_step(
                x,
                y,
                global_batch,
                local_scale**2,
                SLOTS_PER_RANK * session.size if comm is not None else 0,
                monitoring,
                comm is not None,
            )
            comm_s = self.agreement.step_comm_s
            loss, correct, small_sq, big_sq = out
        else:
            flat = self.adapter.gradients(x, y, global_batch)
            grads = flat[:-3]
            if monitoring and len(x):
                # This worker's own mean gradient is B/n times its share (scaled by 1/B).
                flat[-1] = float(np.dot(grads, grads)) * local_scale**2
            t1 = time.perf_counter()
            if comm is not None:
                comm.allreduce(flat, op="sum")
            comm_s = time.perf_counter() - t1
            self.adapter.apply_gradients(grads)
            big_sq = float(np.dot(grads, grads)) if monitoring else 0.0
            loss, correct, small_sq = flat[-3], flat[-2], flat[-1]
        if monitoring:
            size = session.size
            self.noise.update(
                small_sq_norm=float(small_sq) / size,
                small_batch=global_batch / size,
                big_sq_norm=float(big_sq),
                big_batch=global_batch,
            )
        return float(loss), float(correct), comm_s


class SMA(Strategy):
    name = "sma"

    def step(self, x, y, global_batch, monitoring, local_scale):
        flat = self.adapter.gradients(x, y, global_batch)
        t1 = time.perf_counter()
        # Average the models (and sum the loss counters in the same call), then take this
        # worker's own step: B/n times its gradient is the mean gradient of its own samples.
        counters = average_weights(
            self.adapter, self.session, alpha=self.trainer.sma_alpha, extra=flat[-3:-1].copy()
        )
        comm_s = time.perf_counter() - t1
        self.adapter.apply_gradients(flat[:-3] * local_scale)
        return float(counters[0]), float(counters[1]), comm_s


class Pair(Strategy):
    name = "pair"

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        self._published_in = -1  # cluster version in which this worker last published its model

    def step(self, x, y, global_batch, monitoring, local_scale):
        flat = self.adapter.gradients(x, y, global_batch)
        comm = self.session.communicator
        t1 = time.perf_counter()
        self._average_with_a_peer(comm)
        comm.allreduce(flat[-3:-1], op="sum")  # the loss counters, for reporting
        comm_s = time.perf_counter() - t1
        self.adapter.apply_gradients(flat[:-3] * local_scale)
        return float(flat[-3]), float(flat[-2]), comm_s

    def _average_with_a_peer(self, comm) -> None:
        """Average this worker's model with a random peer's latest published one."""
        session = self.session
        rank, size = session.rank, session.size
        weights = self.adapter.weights()
        if self._published_in != session.cluster_version:
            # First pair step in this version: everyone publishes before anyone asks.
            comm.publish("model", weights)
            comm.barrier()
            self._published_in = session.cluster_version
        rng = np.random.default_rng([self.trainer.seed, self.trainer.step, rank])
        peer = (rank + 1 + int(rng.integers(size - 1))) % size
        theirs = np.empty_like(weights)
        comm.request(peer, "model", theirs)
        weights = 0.5 * (weights + theirs)
        self.adapter.set_weights(weights)
        comm.publish("model", weights)


KINDS: dict[str, type[Strategy]] = {kind.name: kind for kind in (SSGD, SMA, Pair)}
# The names in the shared vocabulary's order; a joiner receives the strategy as an index.
STRATEGIES = v.STRATEGIES


def check_strategy(name: Any) -> str:
    if name not in KINDS:
        raise ValueError(
            f"strategy {name!r} is not supported by this runtime; use {' or '.join(STRATEGIES)}"
        )
    return name


def average_weights(
    adapter: ModelAdapter, session: Session, *, alpha: float, extra: np.ndarray | None = None
) -> np.ndarray:
    """Pull every worker's model ``alpha`` of the way to the average of all models.
    ``extra`` values ride along in the same allreduce and come back summed."""
    comm = session.communicator
    tail = extra if extra is not None else np.zeros(0, np.float32)
    if comm is None:
        return tail
    weights = adapter.weights()
    buffer = np.concatenate([weights, tail.astype(np.float32)])
    comm.allreduce(buffer, op="sum")
    average = buffer[: weights.size] / session.size
    adapter.set_weights((1.0 - alpha) * weights + alpha * average)
    return buffer[weights.size :]


def average_optimizer_state(adapter: ModelAdapter, session: Session) -> None:
    """Replace every worker's float32 optimizer state (momentum, …) by the average."""
    comm = session.communicator
    if comm is None:
        return
    arrays = adapter.optimizer_state()
    slots = [a for a in arrays if a.dtype == np.float32]
    if not slots:
        return
    flat = np.concatenate([a.ravel() for a in slots])
    comm.allreduce(flat, op="sum")
    flat /= session.size
    averaged, offset = [], 0
    for a in arrays:
        if a.dtype == np.float32:
            averaged.append(flat[offset : offset + a.size].reshape(a.shape))
            offset += a.size
        else:
            averaged.append(a)
    adapter.load_optimizer_state(averaged)
