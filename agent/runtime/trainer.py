"""The training loop, on any framework: step boundary, batch, strategy step, metrics.

Each step:

1. **Boundary.** The workers agree on the commands every one of them has received and
   apply exactly those (:mod:`agent.runtime.commands`), move to a newer cluster version
   every one of them knows of (:mod:`agent.runtime.membership`), and stay here while
   paused.
2. **Batch.** The next global batch of the epoch; this worker takes its share
   (:mod:`agent.runtime.sampler`).
3. **Strategy step.** The current strategy object (:mod:`agent.runtime.strategies`) trains
   on the share; a strategy switch swaps the object at a boundary.
4. **Metrics.** Every ``log_every`` steps the loss, accuracy, throughput, step, compute
   and communication times and the monitors' values (:mod:`agent.runtime.monitors`) go
   to the agent.

A collective that fails (a peer died) takes nothing of the step: every collective comes
before the update, so the worker recovers in the next cluster version and takes the
same batch again. The trainer reaches the model only through a
:class:`~agent.runtime.adapter.ModelAdapter`; :class:`agent.runtime.tf.Trainer` is this
loop on a Keras model. Framework-neutral: no TensorFlow here.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from agent.runtime import checkpoint, commands, routing
from agent.runtime.adapter import ModelAdapter
from agent.runtime.commands import Agreement
from agent.runtime.membership import (
    ROUTED_RING,
    TOPOLOGIES,
    enter_version,
    join_as_standby,
    native_algorithm,
    recover,
)
from agent.runtime.monitors import GradientNoiseMonitor
from agent.runtime.sampler import GlobalBatchSampler
from agent.runtime.session import Session
from agent.runtime.strategies import KINDS, check_strategy


class Trainer:
    """Synchronous data-parallel training of one worker's model replica with live knobs
    (batch size, learning rate, strategy, topology, membership)."""

    def __init__(self, session: Session, adapter: ModelAdapter, *, seed: int = 0):
        hp = session.hyperparameters
        self.session = session
        self.adapter = adapter
        self.seed = seed
        self.step = 0
        self.batch_size = session.batch_size
        self.lr = session.lr
        self.stopped = False
        self.paused = False
        self.topology = session.params.get("topology") or "auto"
        # routed_ring: the cluster version and step the ring was last routed in (routing).
        self._routed: tuple[int, int] | None = None
        self._ring_comm_best: float | None = None  # least comm time per step since routing
        self.ring_probe_every = int(hp.get("ring_probe_every", 100) or 0)
        self.sma_alpha = float(hp.get("sma_alpha", 0.1))
        # S-SGD as one compiled call per step (hyper-parameter ``fused_step``; false keeps
        # the two-call path SMA and pair averaging use, for comparison).
        self.fused_step = bool(hp.get("fused_step", True))
        self.noise = GradientNoiseMonitor()  # also read by the adascale lr rule
        self.agreement = Agreement(session, session.first_seq)
        self.sampler: GlobalBatchSampler | None = None
        # Called as on_batch(step, epoch, indices) with this worker's share of each global
        # batch it trains on (tests use it to check data coverage across resizes).
        self.on_batch = None
        # One object per strategy, kept across switches (pair averaging remembers where
        # it published its model).
        self.strategies = {name: kind(self) for name, kind in KINDS.items()}
        self.strategy = self.strategies[check_strategy(session.params.get("strategy") or "ssgd")]
        adapter.set_learning_rate(self.lr)
        self._built = False

    # -- the knobs commands turn (every worker at the same step boundary) ---------------
    def set_lr(self, lr: float) -> None:
        self.lr = lr
        self.adapter.set_learning_rate(lr)

    def set_strategy(self, name: str) -> None:
        new = self.strategies[check_strategy(name)]
        if new is not self.strategy:
            new.on_enter()
            self.strategy = new

    def set_topology(self, name: str) -> None:
        if name not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {name!r}")
        comm = self.session.communicator
        if comm is not None:
            # Every worker reaches this at the same step, so the collective switch lines up.
            comm.set_algorithm(native_algorithm(name))
            if name != ROUTED_RING and tuple(comm.ring_order) != tuple(range(comm.size)):
                comm.set_ring_order(range(comm.size))
        self.topology = name
        self._routed = None  # routed_ring: probe and order the ring at this boundary

    def _route_ring_if_due(self) -> None:
        """routed_ring: probe the paths and order the ring when switched to it, in a new
        cluster version and every ``ring_probe_every`` steps (every worker at the same
        step boundary; :mod:`agent.runtime.routing`)."""
        session, comm = self.session, self.session.communicator
        if self.topology != ROUTED_RING or comm is None:
            return
        if self._routed is not None:
            version, step = self._routed
            due = self.ring_probe_every and self.step - step >= self.ring_probe_every
            if version == session.cluster_version and not due:
                return
        figures = routing.route(comm)
        self._routed = (session.cluster_version, self.step)
        self._ring_comm_best = None
        if session.rank == 0:
            session.report(figures, step=self.step)

    def _watch_ring(self, comm_per_step: float) -> None:
        """routed_ring, at every report (all workers at the same step): when any worker's
        communication time per step has grown ``routing.REPROBE_AFTER`` times over its
        least since the ring was routed (a path slowed after the probe), probe again at
        the next boundary. One small allreduce per report; the probe only when needed."""
        comm = self.session.communicator
        if self.topology != ROUTED_RING or comm is None or self._routed is None:
            return
        best = self._ring_comm_best
        self._ring_comm_best = comm_per_step if best is None else min(best, comm_per_step)
        slower = np.array(
            [float(best is not None and comm_per_step > routing.REPROBE_AFTER * best)]
        )
        comm.allreduce(slower, op="max", algorithm="tree")
        if slower[0] > 0:
            self._routed = None

    # -- checkpoints ---------------------------------------------------------------------
    def checkpoint(self) -> Path | None:
        """Write weights, optimizer slots, step, batch size, lr and data position to
        ``<checkpoint_dir>/step-<N>/`` (rank 0 writes; all ranks hold the same state)."""
        directory = self.session.hyperparameters.get("checkpoint_dir")
        if not directory:
            raise ValueError("the job names no checkpoint_dir (a hyper-parameter)")
        if self.session.rank != 0:
            return None
        epoch, position = self.sampler.state() if self.sampler else (0, 0)
        meta = checkpoint.Meta(self.step, self.batch_size, self.lr, epoch, position)
        target = checkpoint.save(directory, meta, self.adapter.state())
        self.session.report({"checkpoint_step": self.step}, step=self.step)
        return target

    def restore(self, path: str | Path, n_samples: int) -> None:
        """Resume from a checkpoint folder (every rank reads it; it must be reachable
        from every node, or the job must run on the node that wrote it)."""
        meta, arrays = checkpoint.load(path)
        expected = len(self.adapter.state())
        if len(arrays) != expected:
            raise ValueError(
                f"checkpoint {path} holds {len(arrays)} arrays; this model and optimizer "
                f"have {expected}"
            )
        self.adapter.load_state(arrays)
        self.step = meta.step
        self.batch_size = meta.batch_size
        self.set_lr(meta.lr)
        self.sampler = GlobalBatchSampler(n_samples, self.seed)
        self.sampler.seek(meta.epoch, meta.position)

    # -- setup ---------------------------------------------------------------------------
    def _build(self, x: np.ndarray) -> None:
        self.adapter.build(x, self.agreement.allreduce_in_step)
        self._built = True
        if not self.session.joining:
            # Make every worker start from rank 0's weights (a joiner gets them when let in).
            from agent.native import CollectiveError

            try:
                self._broadcast_weights()
            except CollectiveError as exc:  # a member died before training started
                recover(self, exc)

    def _broadcast_weights(self) -> None:
        comm = self.session.communicator
        if comm is None:
            return
        flat = self.adapter.weights()
        if self.session.rank != 0:
            flat[:] = 0.0
        comm.allreduce(flat, op="sum")
        self.adapter.set_weights(flat)

    def _trace_steps(self, x: np.ndarray, y: np.ndarray) -> None:
        """A warm standby's throw-away steps on a few samples, so that its steps are
        compiled before it is let in (the members' state replaces their effect)."""
        few = np.arange(min(len(x), max(1, self.batch_size // max(self.session.size, 2))))
        flat = self.adapter.gradients(x[few], y[few], len(few))
        self.adapter.apply_gradients(flat[:-3])
        if self.fused_step:  # and the one-call S-SGD step a member runs
            for monitor in (True, False):
                self.adapter.fused_step(x[few], y[few], len(few), 1.0, 0, monitor, True)

    # -- the loop ------------------------------------------------------------------------
    def _boundary(self) -> bool:
        """A step boundary: apply the commands every worker has, switch to a newer cluster
        version every worker knows of, and stay here while paused. False: stop training."""
        session = self.session
        while True:
            agreed, version = self.agreement.agree()
            for command in agreed:
                commands.apply(self, command)
            if version > session.cluster_version and not self.stopped:
                members = session.membership.cluster_members(version)
                if not enter_version(self, version, members, since=time.perf_counter()):
                    return False
                continue  # agree again in the new version, as joiners do first of all
            if not self.paused or self.stopped:
                return not self.stopped
            time.sleep(0.05)  # paused: keep agreeing on commands (resume, stop, a resize)

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        steps: int,
        log_every: int = 10,
        monitor_every: int = 1,
        resume_from: str | None = None,
    ) -> None:
        """Train until step ``steps`` on features ``x`` and integer class labels ``y``,
        reporting metrics every ``log_every`` steps and updating the gradient-noise monitor
        every ``monitor_every`` steps (0 turns it off); with ``resume_from``, continue from
        that checkpoint folder."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.ascontiguousarray(y, dtype=np.int32)
        if not self._built:
            self._build(x)
        if self.sampler is None or self.sampler.n_samples != len(x):
            self.sampler = GlobalBatchSampler(len(x), self.seed)
        if resume_from and not self.session.joining:
            self.restore(resume_from, len(x))
        session, sampler = self.session, self.sampler
        if session.joining:
            self._trace_steps(x, y)
            join_as_standby(self)
        window_start, window_samples = time.perf_counter(), 0
        compute_time = comm_time = 0.0
        loss_sum = correct_sum = 0.0
        seen = 0
        session.report({"batch_size": self.batch_size}, step=self.step, per_rank=True)
        checkpoint_every = int(session.hyperparameters.get("checkpoint_every", 0) or 0)
        alone = self.strategies["ssgd"]  # without a communicator every strategy is local SGD
        from agent.native import CollectiveError

        while self.step < steps and not self.stopped:
            data_position = sampler.state()
            version = session.cluster_version
            try:
                if not self._boundary():
                    break
                if session.cluster_version != version:
                    window_start, window_samples = time.perf_counter(), 0
                    compute_time = comm_time = 0.0
                self._route_ring_if_due()
                comm, rank, size = session.communicator, session.rank, session.size
                if checkpoint_every and self.step and self.step % checkpoint_every == 0:
                    self.checkpoint()
                batch = sampler.next(self.batch_size)
                batch_epoch = sampler.epoch
                mine = GlobalBatchSampler.shard(batch, rank, size)
                t0 = time.perf_counter()
                monitoring = monitor_every > 0 and size > 1 and self.step % monitor_every == 0
                # This worker's gradient is scaled by 1/B; its own mean gradient is B/n times it.
                local_scale = len(batch) / len(mine) if len(mine) else 0.0
                strategy = self.strategy if comm is not None else alone
                loss, correct, comm_s = strategy.step(
                    x[mine], y[mine], len(batch), monitoring, local_scale
                )
                compute_time += time.perf_counter() - t0 - comm_s
                comm_time += comm_s
                loss_sum += loss
                correct_sum += correct
                seen += len(batch)
                window_samples += len(batch)
                if self.on_batch is not None:
                    self.on_batch(self.step, batch_epoch, mine)
                self.step += 1
                if self.step % log_every == 0 or self.step == steps:
                    steps_in_window = (
                        log_every if self.step % log_every == 0 else self.step % log_every
                    )
                    self._report_window(
                        elapsed=time.perf_counter() - window_start,
                        steps=steps_in_window,
                        samples=window_samples,
                        seen=seen,
                        loss_sum=loss_sum,
                        correct_sum=correct_sum,
                        compute_time=compute_time,
                        comm_time=comm_time,
                    )
                    self._watch_ring(comm_time / steps_in_window)
                    window_start, window_samples = time.perf_counter(), 0
                    compute_time = comm_time = 0.0
                    loss_sum = correct_sum = 0.0
                    seen = 0
            except CollectiveError as exc:
                # Nothing of this step was applied (every collective comes before the
                # update): take its batch again in the next version.
                sampler.seek(*data_position)
                if not recover(self, exc):
                    break
                window_start, window_samples = time.perf_counter(), 0
                compute_time = comm_time = 0.0
                continue

    def _report_window(
        self,
        *,
        elapsed: float,
        steps: int,
        samples: int,
        seen: int,
        loss_sum: float,
        correct_sum: float,
        compute_time: float,
        comm_time: float,
    ) -> None:
        """The metrics of the last ``steps`` steps: this worker's, and on rank 0 the job's."""
        session = self.session
        # This worker's own times: a straggler shows as the worker that computes longest.
        per_rank: dict[str, float] = {
            "batch_size": self.batch_size,
            "step_time": elapsed / steps,
            "compute_time": compute_time / steps,
        }
        if session.size > 1:
            # Lets anyone check that workers hold the same model where the strategy says so.
            per_rank["param_checksum"] = float(self.adapter.checksum())
        session.report(per_rank, step=self.step, per_rank=True)
        if session.rank == 0:
            session.report(
                {
                    "loss": loss_sum / max(seen, 1),
                    "accuracy": correct_sum / max(seen, 1),
                    "throughput": samples / elapsed if elapsed > 0 else 0.0,
                    "batch_size": self.batch_size,
                    "lr": self.lr,
                    "workers": session.size,
                    "step_time": elapsed / steps,
                    "compute_time": compute_time / steps,
                    "comm_time": comm_time / steps,
                    **self.noise.values(),
                },
                step=self.step,
            )
