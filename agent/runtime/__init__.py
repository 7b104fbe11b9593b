"""The training runtime a worker's script imports: synchronous data-parallel training
for Keras models, with knobs that change while training runs.

    from agent import runtime
    session = runtime.init()
    trainer = runtime.Trainer(session, model, optimizer, loss_fn)
    trainer.fit(x_train, y_train, steps=session.hyperparameters["steps"])

What it does each step:

1. **Control consensus.** Commands from the agent (``set_batch_size``, ``set_lr``,
   ``stop``) arrive over the agent channel (a Unix socket the worker listens on, see
   :mod:`agent.runtime.channel`; stdin without one) with a per-job sequence number, each
   taken once whatever the agent redelivers, possibly at different
   times on different workers. Before computing, the workers allreduce(min) the
   highest sequence number each has received without gaps; every worker then applies
   exactly the commands up to that number. All workers therefore apply a command at
   the same step, whatever the arrival order.
2. **Sharded global batch.** An epoch is a permutation (the same on every worker,
   seeded by the epoch); the global batch is the next ``batch_size`` samples of it and
   worker *r* takes every *n*-th of them from offset *r*. Within an epoch no sample is
   skipped or seen twice, and the split is exact for any batch size and worker count.
3. **S-SGD.** Each worker computes the gradient of ``sum(loss) / global_batch`` over
   its share; the gradients, fused into one buffer with the loss and correct-count
   sums, are allreduced (sum) by the native library. The result is exactly the
   gradient of the mean loss over the global batch, as in single-process training.

Without the agent's environment (``ADAPTRAIN_*``) a script runs as a single worker.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent import protocol
from agent.runtime.monitors import GradientNoiseMonitor
from agent.runtime.scaling import scaled_lr

MAX_KEPT_REPLIES = 1000  # command replies a worker keeps to answer redeliveries
# Interrupts the main thread's blocked formation of a communicator that a newer cluster
# version has superseded (see Session.form_first_communicator).
SUPERSEDED_SIGNAL = signal.SIGUSR1


class SupersededVersion(Exception):
    """Forming a cluster version's communicator was abandoned: a newer version came."""


@dataclass
class Session:
    """One worker's view of the job: who it is, its peers, its parameters, its inbox."""

    job: int
    rank: int
    size: int
    peers: list[str]
    params: dict[str, Any]
    first_seq: int
    communicator: Any = None
    address: str = ""  # host:port this worker listens on: its identity across cluster versions
    cluster_version: int = 0
    joining: bool = False  # started as a warm standby, not yet a member
    left: bool = False  # removed from the job by a newer cluster version
    _inbox: dict[int, dict] = field(default_factory=dict)
    _contiguous_seq: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _out_lock: threading.Lock = field(default_factory=threading.Lock)
    _clusters: dict[int, list[str]] = field(default_factory=dict)
    _cluster_changed: threading.Condition = field(default_factory=threading.Condition)
    _stdin_closed: bool = False  # the agent is gone for good (stdin closed, or orphaned)
    _channel: Any = None  # agent.runtime.channel.AgentChannel when the agent gave us a socket
    _replies: dict[int, dict] = field(default_factory=dict)  # seq -> applied/failed sent for it
    _forming: int | None = None  # the version whose communicator the main thread is forming

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return self.params.get("hyperparameters", {})

    @property
    def rejoin_timeout_s(self) -> float:
        """How long to wait for the next cluster version after a peer died."""
        return float(self.hyperparameters.get("rejoin_timeout_s", 120))

    @property
    def batch_size(self) -> int:
        return int(self.params.get("batch_size") or self.hyperparameters.get("batch_size", 32))

    @property
    def lr(self) -> float:
        return float(self.params.get("lr") or self.hyperparameters.get("lr", 0.01))

    # -- messages to the agent --------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        if message.get("type") in ("applied", "failed") and isinstance(message.get("seq"), int):
            # Kept so that a command redelivered after an agent restart is answered again
            # (the reply may have died with the old agent) without being applied twice.
            with self._lock:
                self._replies[message["seq"]] = message
                if len(self._replies) > MAX_KEPT_REPLIES:
                    del self._replies[min(self._replies)]
        if self._channel is not None:
            self._channel.send(message)
            return
        line = protocol.PREFIX + json.dumps(message, separators=(",", ":"))
        with self._out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def report(self, metrics: dict[str, float], *, step: int, per_rank: bool = False) -> None:
        """Report metric values at ``step``: whole-job series, or this worker's when per_rank."""
        now = time.time()
        points = [
            {
                "name": name,
                "step": int(step),
                "value": float(value),
                "time": now,
                **({"rank": self.rank} if per_rank else {}),
            }
            for name, value in metrics.items()
        ]
        self.send({"type": "metrics", "points": points})

    # -- commands from the agent -------------------------------------------------------
    def _receive(self, command: dict) -> None:
        """Take a command into the inbox, once: one whose seq was received before (still
        waiting, or applied) is a redelivery; an applied one is answered again."""
        seq = int(command["seq"])
        with self._lock:
            duplicate = seq <= self._contiguous_seq or seq in self._inbox
            if not duplicate:
                self._inbox[seq] = command
                while self._contiguous_seq + 1 in self._inbox:
                    self._contiguous_seq += 1
            reply = self._replies.get(seq) if duplicate else None
        if reply is not None and reply.get("id") == command.get("id"):
            self.send(reply)

    def _on_agent_message(self, message: dict) -> None:
        if (
            message.get("type") == "command"
            and isinstance(message.get("seq"), int)
            and not isinstance(message.get("seq"), bool)
        ):
            self._receive(message)
        elif message.get("type") == "cluster":
            self._receive_cluster(message)

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                print(f"ignoring malformed command line: {line[:200]!r}", file=sys.stderr)
                continue
            if isinstance(message, dict):
                self._on_agent_message(message)
        self._agent_gone()

    def _agent_gone(self) -> None:
        """No agent will send anything any more: waits for a cluster version end."""
        with self._cluster_changed:
            self._stdin_closed = True
            self._cluster_changed.notify_all()

    def _orphaned(self) -> None:
        """No agent connected for the grace period: stop this worker (the main thread gets
        KeyboardInterrupt at its next Python instruction; a worker stuck in native code for
        another minute is ended outright)."""
        grace = self._channel.grace_s if self._channel is not None else 0
        print(
            f"adaptrain: no agent connected for {grace:.0f} s ({protocol.ENV_AGENT_GRACE_S}); "
            f"this worker stops",
            file=sys.stderr,
            flush=True,
        )
        self._agent_gone()
        import _thread

        _thread.interrupt_main()

        def hard_stop() -> None:
            time.sleep(60)
            print(
                "adaptrain: the worker did not stop within 60 s of being orphaned; exiting",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)

        threading.Thread(target=hard_stop, name="adaptrain-orphan-exit", daemon=True).start()

    def _receive_cluster(self, message: dict) -> None:
        version, members = message.get("version"), message.get("members")
        if (
            not isinstance(version, int)
            or isinstance(version, bool)
            or not isinstance(members, list)
            or not members
            or not all(isinstance(m, str) and m for m in members)
        ):
            print(f"ignoring malformed cluster message: {str(message)[:200]!r}", file=sys.stderr)
            return
        with self._cluster_changed:
            if version in self._clusters or version < self.cluster_version:
                return  # known already (redelivered after an agent restart) or superseded
            self._clusters[version] = list(members)
            self._cluster_changed.notify_all()
            superseded = self._forming is not None and version > self._forming
        if superseded:
            signal.pthread_kill(threading.main_thread().ident, SUPERSEDED_SIGNAL)

    def latest_cluster_version(self) -> int:
        """The highest cluster version announced to this worker (its own if none newer)."""
        with self._cluster_changed:
            return max([self.cluster_version, *self._clusters])

    def cluster_members(self, version: int) -> list[str]:
        with self._cluster_changed:
            return list(self._clusters[version])

    def wait_for_cluster(
        self, *, min_version: int, timeout_s: float | None, member: str | None = None
    ) -> tuple[int, list[str]] | None:
        """The newest announced version ≥ ``min_version`` (listing ``member`` if given);
        None when none came within ``timeout_s`` or the agent is gone for good (it closed
        our stdin, or no agent connected to our socket within the grace period)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def found() -> tuple[int, list[str]] | None:
            for version in sorted(self._clusters, reverse=True):
                if version >= min_version and (member is None or member in self._clusters[version]):
                    return version, list(self._clusters[version])
            return None

        with self._cluster_changed:
            while True:
                result = found()
                if result is not None or self._stdin_closed:
                    return result
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cluster_changed.wait(remaining if remaining is not None else 1.0)

    def form_communicator(self, version: int, members: list[str], algorithm: str = "auto") -> None:
        """Leave the current communicator and build the one of cluster ``version``
        (blocks until every member connected)."""
        if self.communicator is not None:
            self.communicator.close()
            self.communicator = None
        self.rank = members.index(self.address)
        self.size = len(members)
        self.peers = list(members)
        self.cluster_version = version
        self.joining = False
        if self.size > 1:
            self.communicator = _new_communicator(self.rank, self.peers, version, algorithm)

    def next_version_after(
        self,
        failed: int,
        what: str,
        error: Exception,
        *,
        timeout_s: float,
        peer_failed: bool = True,
    ) -> tuple[int, list[str]]:
        """Version ``failed`` cannot go on (``what`` happened): close its communicator, say
        ``peer_failed`` when a collective failed, and wait up to ``timeout_s`` for a newer
        version; returns it (version, members)."""
        if peer_failed:
            self.send({"type": "peer_failed", "version": failed, "error": str(error)[:1000]})
        self.close_communicator()
        found = self.wait_for_cluster(min_version=failed + 1, timeout_s=timeout_s)
        if found is None:
            raise RuntimeError(
                f"{what} and no newer version came within {timeout_s:.0f} s"
            ) from error
        return found

    def form_first_communicator(
        self, algorithm: str = "auto", *, timeout_s: float | None = None
    ) -> None:
        """Form the communicator of the version this worker was started in — or of a newer
        one: a member that dies before the group has formed (or a version written while
        this worker's node was still starting its workers) would otherwise leave the others
        waiting for it until the collective timeout and then fail the job. A newer version
        announced meanwhile interrupts the formation at once (the reader thread signals the
        main thread); a formation that fails waits up to ``timeout_s`` for a newer version.
        A worker that forms a version other than the one it was started in, or starts in
        one after the first, reports ``rescaled`` like a survivor of a resize; one that a
        newer version leaves out reports ``left`` and exits with status 0. ``timeout_s``
        defaults to :attr:`rejoin_timeout_s`."""
        from agent.native import CollectiveError

        timeout_s = self.rejoin_timeout_s if timeout_s is None else timeout_s
        started_in, since = self.cluster_version, time.perf_counter()
        version, members = self.cluster_version, list(self.peers)
        interruptible = threading.current_thread() is threading.main_thread()
        if interruptible:
            signal.signal(SUPERSEDED_SIGNAL, self._on_superseded)
        while True:
            try:
                with self._cluster_changed:
                    if interruptible:
                        self._forming = version
                    if any(v > version for v in self._clusters):
                        raise SupersededVersion(f"cluster version {version} was superseded")
                try:
                    self.form_communicator(version, members, algorithm)
                finally:
                    with self._cluster_changed:
                        self._forming = None
                break
            except (CollectiveError, SupersededVersion) as exc:
                version, members = self.next_version_after(
                    version,
                    f"could not form cluster version {version} ({exc})",
                    exc,
                    timeout_s=timeout_s,
                    peer_failed=isinstance(exc, CollectiveError),
                )
                if self.address not in members:
                    self.send({"type": "left", "version": version, "step": 0})
                    self.left, self.rank = True, -1
                    raise SystemExit(0) from None  # the launcher flushes what is left to send
        if version != started_in or version > 1:
            self.send(
                {
                    "type": "rescaled",
                    "version": version,
                    "rank": self.rank,
                    "size": self.size,
                    "step": 0,
                    "paused_s": time.perf_counter() - since,
                }
            )

    def _on_superseded(self, signum, frame) -> None:
        # Runs in the main thread between bytecodes or from inside the native formation's
        # poll (EINTR); only while forming, so a late signal is harmless.
        if self._forming is not None:
            raise SupersededVersion(f"cluster version {self._forming} was superseded")

    def close_communicator(self) -> None:
        if self.communicator is not None:
            try:
                self.communicator.close()
            except Exception:  # noqa: BLE001 - already failed; closing is best effort
                pass
            self.communicator = None

    def discard_commands(self, up_to_seq: int) -> None:
        """Forget commands already applied (by the members a joiner caught up with)."""
        with self._lock:
            for seq in [s for s in self._inbox if s <= up_to_seq]:
                del self._inbox[seq]
            self._contiguous_seq = max(self._contiguous_seq, up_to_seq)
            while self._contiguous_seq + 1 in self._inbox:
                self._contiguous_seq += 1

    def received_seq(self) -> int:
        with self._lock:
            return self._contiguous_seq

    def take_commands(self, up_to_seq: int) -> list[dict]:
        """Remove and return, in order, the commands with seq ≤ up_to_seq."""
        with self._lock:
            ready = sorted(s for s in self._inbox if s <= up_to_seq)
            return [self._inbox.pop(s) for s in ready]


def _new_communicator(rank: int, peers: list[str], version: int, algorithm: str):
    from agent.native import Communicator

    algorithm = algorithm if algorithm in TOPOLOGIES else "auto"
    try:
        return Communicator(
            rank=rank, peers=peers, timeout_s=None, algorithm=algorithm, cluster_version=version
        )
    except TypeError:  # a native library without cluster versions
        return Communicator(rank=rank, peers=peers, timeout_s=None, algorithm=algorithm)


def init() -> Session:
    """Join the job described by the agent's environment (or run alone without it).

    A worker started as a warm standby (``ADAPTRAIN_JOINING=1``) is not a member yet:
    :meth:`Trainer.fit` builds the model, reports ``standby`` and waits to be let in."""
    env = os.environ
    if protocol.ENV_RANK not in env and env.get(protocol.ENV_JOINING) != "1":
        session = Session(
            job=0,
            rank=0,
            size=1,
            peers=[],
            params=json.loads(env.get(protocol.ENV_PARAMS, "{}")),
            first_seq=0,
        )
        return session
    peers = [p for p in env.get(protocol.ENV_PEERS, "").split(",") if p]
    joining = env.get(protocol.ENV_JOINING) == "1"
    rank = -1 if joining else int(env[protocol.ENV_RANK])
    address = env.get(protocol.ENV_ADDRESS) or (peers[rank] if 0 <= rank < len(peers) else "")
    if not address:
        raise ValueError(f"{protocol.ENV_ADDRESS} must name this worker's host:port")
    first_seq = int(env.get(protocol.ENV_FIRST_SEQ, "0"))
    session = Session(
        job=int(env.get(protocol.ENV_JOB, "0")),
        rank=rank,
        size=0 if joining else len(peers),
        peers=peers,
        params=json.loads(env.get(protocol.ENV_PARAMS, "{}")),
        first_seq=first_seq,
        address=address,
        cluster_version=int(env.get(protocol.ENV_CLUSTER_VERSION, "0")),
        joining=joining,
    )
    session._contiguous_seq = first_seq
    socket_path = env.get(protocol.ENV_AGENT_SOCKET)
    if socket_path:
        from agent.runtime.channel import AgentChannel

        session._channel = AgentChannel(
            socket_path,
            on_message=session._on_agent_message,
            on_orphaned=session._orphaned,
            grace_s=float(env.get(protocol.ENV_AGENT_GRACE_S) or 600),
        )
        session._channel.start()
    else:
        threading.Thread(target=session._read_stdin, name="adaptrain-commands", daemon=True).start()
    if not joining and session.size > 1:
        session.form_first_communicator(session.params.get("topology") or "auto")
    return session


def configure_tensorflow_threads(threads: int = 1) -> None:
    """Keep each worker to ``threads`` CPU threads so co-located workers do not fight."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


# S-SGD: fused, averaged gradients (every worker holds the same model). SMA: synchronous
# model averaging (KungFu's SynchronousAveragingOptimizer): each worker applies its own
# gradient, and every step the models are averaged and each is pulled a fraction
# ``sma_alpha`` towards the average — more exploration early in training. Pair averaging
# (AD-PSGD, Lian et al. 2018; KungFu's PairAveragingOptimizer): each worker publishes its
# model, fetches one random peer's latest model without that peer taking part, averages
# the two and applies its own gradient — no collective over the model at all.
STRATEGIES = ("ssgd", "sma", "pair")
# Allreduce algorithms of the native library, switched collectively at a step boundary.
TOPOLOGIES = ("ring", "tree", "star", "auto")
# Commands that reach the workers only to keep the job's command sequence gap-free: the
# control plane and the agents carry them out. (So is a ``stop`` listing ``joiners``: the
# agents end those abandoned standbys, the members train on.)
AGENT_ACTIONS = ("scale_workers",)


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


class Trainer:
    """Synchronous data-parallel (S-SGD) training of a Keras model with live knobs.

    ``loss_fn`` maps (labels, logits) to per-sample losses (use ``reduction="none"``).
    """

    def __init__(self, session: Session, model, optimizer, loss_fn, *, seed: int = 0):
        import tensorflow as tf

        self.tf = tf
        self.session = session
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.seed = seed
        self.step = 0
        self.batch_size = session.batch_size
        self.lr = session.lr
        self.stopped = False
        self.paused = False
        self.strategy = session.params.get("strategy") or "ssgd"
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy {self.strategy!r} is not supported by this runtime; use "
                f"{' or '.join(STRATEGIES)}"
            )
        self.sma_alpha = float(session.hyperparameters.get("sma_alpha", 0.1))
        self.topology = session.params.get("topology") or "auto"
        self.applied_seq = session.first_seq  # the last command applied
        # Called as on_batch(step, epoch, indices) with this worker's share of each global
        # batch it trains on (tests use it to check data coverage across resizes).
        self.on_batch = None
        self._pair_version = -1  # cluster version in which this worker last published its model
        self.noise = GradientNoiseMonitor()  # also read by the adascale lr rule
        self._sampler: GlobalBatchSampler | None = None
        self._variables = None
        self._sizes: list[int] = []
        self._shapes: list = []
        self.optimizer.learning_rate.assign(self.lr)
        self._compute = None
        self._apply = None
        self._checksum = None
        self._fused = {}
        self._scalars: dict = {}
        # Set by the fused S-SGD step: (cluster version, min received seq, min known version).
        self._agreed_ahead: tuple[int, int, int] | None = None
        self._step_error: Exception | None = None
        self._step_comm_s = 0.0
        # S-SGD as one compiled call per step (hyper-parameter ``fused_step``; false keeps
        # the two-call path SMA and pair averaging use, for comparison).
        self.fused_step = bool(session.hyperparameters.get("fused_step", True))

    # -- setup ---------------------------------------------------------------------------
    def _build(self, x_sample: np.ndarray) -> None:
        tf = self.tf
        self.model(x_sample[:1])  # create the variables
        variables = self.model.trainable_variables
        self.optimizer.build(variables)  # create the slots now, so checkpoints see them
        self._variables = variables
        self._shapes = [v.shape for v in variables]
        self._sizes = [int(np.prod(v.shape)) for v in variables]
        if not self.session.joining:
            # Make every worker start from rank 0's weights (a joiner gets them when let in).
            from agent.native import CollectiveError

            try:
                self._broadcast_weights()
            except CollectiveError as exc:  # a member died before training started
                self._recover(exc)
        self._feature_shape = list(x_sample.shape[1:])
        feature_shape = [None, *x_sample.shape[1:]]

        @tf.function(
            input_signature=[
                tf.TensorSpec(feature_shape, tf.float32),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([], tf.float32),
            ]
        )
        def compute(x, y, inv_global_batch):
            grads, loss_sum, correct = self._gradients(x, y, inv_global_batch)
            # Fuse every gradient and three scalars into one flat buffer: the loss and
            # correct-count sums, and a slot for this worker's squared local gradient norm
            # (filled in afterwards, only on monitoring steps).
            flat = tf.concat(
                [tf.reshape(g, [-1]) for g in grads]
                + [tf.reshape(loss_sum, [1]), tf.reshape(correct, [1]), tf.zeros([1])],
                axis=0,
            )
            return flat

        sizes, shapes = self._sizes, self._shapes
        optimizer = self.optimizer

        @tf.function(input_signature=[tf.TensorSpec([sum(sizes)], tf.float32)])
        def apply(flat):
            parts = tf.split(flat, sizes)
            grads = [tf.reshape(p, s) for p, s in zip(parts, shapes, strict=True)]
            optimizer.apply_gradients(zip(grads, variables, strict=True))

        @tf.function(input_signature=[])
        def checksum():
            # Per-variable float32 sums added in float64: bit-identical weights give the
            # same value on every rank, and it costs a fraction of copying 8 MB of
            # weights out to NumPy first (0.6 ms vs 4.7 ms on synthetic_cnn).
            return tf.add_n([tf.cast(tf.reduce_sum(v), tf.float64) for v in variables])

        self._compute = compute
        self._apply = apply
        self._checksum = checksum
        self._fused = {}  # S-SGD's one-call step, with and without the allreduce (built on first use)

    def _gradients(self, x, y, inv_global_batch):
        """(Traced inside a compiled step.) This worker's gradients of the batch's summed
        loss scaled by ``inv_global_batch`` (1/B: summed over the workers they are the mean
        gradient), and the loss and correct-prediction sums of its samples."""
        tf = self.tf
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            loss_sum = tf.reduce_sum(self.loss_fn(y, logits))
            scaled = loss_sum * inv_global_batch
        grads = tape.gradient(scaled, self._variables)
        grads = [
            tf.zeros_like(v) if g is None else g
            for g, v in zip(grads, self._variables, strict=True)
        ]
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), tf.float32)
        )
        return grads, loss_sum, correct

    def _fused_step(self, distributed: bool, monitor: bool):
        """S-SGD's whole step as one compiled call: gradients, the fused allreduce (the
        native library called from the graph, with the command agreement riding in the
        same buffer), the update, and the numbers the monitors need. One call instead of
        two plus NumPy copies between them: on a small model that overhead is most of a step.

        Returns [loss sum, correct count, the workers' summed squared local gradient
        norms, squared norm of the averaged gradient]; the norms are 0 unless ``monitor``
        (each of the four variants is traced once)."""
        if (distributed, monitor) in self._fused:
            return self._fused[distributed, monitor]
        tf = self.tf
        variables, optimizer = self._variables, self.optimizer
        sizes, shapes = self._sizes, self._shapes
        feature_shape = [None, *self._feature_shape]

        @tf.function(
            input_signature=[
                tf.TensorSpec(feature_shape, tf.float32),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([], tf.int32),
            ]
        )
        def step(x, y, inv_global_batch, local_scale_sq, agree_slots):
            grads, loss_sum, correct = self._gradients(x, y, inv_global_batch)
            # This worker's own mean gradient is B/n times its share (scaled by 1/B).
            # The monitors' two squared norms cost a pass over the gradients: only in the
            # variant that monitors (a graph branch would cost more than the norms on a small model).
            # (2 * l2_loss is the sum of squares in one fused pass, half the time of
            # square-then-sum, which writes a temporary as large as the model.)
            local_sq = (
                tf.add_n([2.0 * tf.nn.l2_loss(g) for g in grads]) * local_scale_sq
                if monitor
                else tf.constant(0.0)
            )
            # Room for the command agreement at the end (see _allreduce_in_step), so the
            # allreduce works on this buffer in place.
            flat = tf.concat(
                [tf.reshape(g, [-1]) for g in grads]
                + [
                    tf.reshape(loss_sum, [1]),
                    tf.reshape(correct, [1]),
                    tf.reshape(local_sq, [1]),
                    tf.zeros([agree_slots]),
                ],
                axis=0,
            )
            if distributed:
                flat = tf.ensure_shape(
                    tf.numpy_function(self._allreduce_in_step, [flat], tf.float32, stateful=True),
                    flat.shape,
                )
            # Split the whole buffer (a slice first would cost a copy of the model).
            *parts, tail = tf.split(flat, [*sizes, -1])
            averaged = [tf.reshape(p, s) for p, s in zip(parts, shapes, strict=True)]
            optimizer.apply_gradients(zip(averaged, variables, strict=True))
            big_sq = (
                tf.add_n([2.0 * tf.nn.l2_loss(g) for g in averaged])
                if monitor
                else tf.constant(0.0)
            )
            return tf.concat([tail[:3], tf.reshape(big_sq, [1])], axis=0)

        # Called through its one concrete function: the polymorphic tf.function's per-call
        # dispatch (binding, signature lookup) is most of a small model's step otherwise.
        self._fused[distributed, monitor] = step.get_concrete_function()
        return self._fused[distributed, monitor]

    def _allreduce_in_step(self, flat: np.ndarray) -> np.ndarray:
        """The allreduce of the fused step (called from the graph). Each worker's received
        command seq and known cluster version go in per-rank slots after the gradients,
        so the sum carries every worker's values and the minimum (what ``_agree`` needs at
        the next step boundary) costs no collective of its own. Each value is split into
        two 20-bit halves, which float32 holds exactly. Without a communicator (a standby
        tracing its step) the gradients come back as they are."""
        session, comm = self.session, self.session.communicator
        if comm is None:
            return flat
        t0 = time.perf_counter()
        size, rank = session.size, session.rank
        if flat.size < 4 * size:
            raise RuntimeError("the fused step was called without room for the command agreement")
        buf = flat if flat.flags.writeable and flat.flags.c_contiguous else flat.copy()
        slots = buf[buf.size - 4 * size :]
        seq, version = session.received_seq(), session.latest_cluster_version()
        slots[:] = 0.0
        slots[4 * rank : 4 * rank + 4] = (
            seq >> 20,
            seq & 0xFFFFF,
            version >> 20,
            version & 0xFFFFF,
        )
        try:
            comm.allreduce(buf, op="sum")
        except Exception as exc:  # noqa: BLE001 - carried out of the graph by _run_fused
            self._step_error = exc
            raise
        agreed = slots.reshape(size, 4).astype(np.int64)
        seqs, versions = (agreed[:, 0] << 20) | agreed[:, 1], (agreed[:, 2] << 20) | agreed[:, 3]
        self._agreed_ahead = (session.cluster_version, int(seqs.min()), int(versions.min()))
        self._step_comm_s = time.perf_counter() - t0
        return buf

    def _scalar(self, value: float, dtype):
        """A scalar tensor, kept for reuse: a step's scalars rarely change between steps."""
        key = (value, dtype)
        tensor = self._scalars.get(key)
        if tensor is None:
            if len(self._scalars) > 64:
                self._scalars.clear()
            tensor = self._scalars[key] = self.tf.constant(value, dtype)
        return tensor

    def _run_fused(
        self,
        x: np.ndarray,
        y: np.ndarray,
        global_batch: int,
        monitor: bool,
        local_scale_sq: float,
        distributed: bool,
    ) -> np.ndarray:
        tf = self.tf
        self._step_error = None
        self._step_comm_s = 0.0
        try:
            slots = (
                4 * self.session.size
                if distributed and self.session.communicator is not None
                else 0
            )
            return self._fused_step(distributed, monitor)(
                tf.constant(x),
                tf.constant(y),
                self._scalar(1.0 / global_batch, tf.float32),
                self._scalar(local_scale_sq, tf.float32),
                self._scalar(slots, tf.int32),
            ).numpy()
        except tf.errors.OpError as exc:
            error, self._step_error = self._step_error, None
            if error is not None:  # the collective failed: the update did not happen
                raise error from exc
            raise

    def _broadcast_weights(self) -> None:
        comm = self.session.communicator
        if comm is None:
            return
        flat = np.concatenate([np.asarray(v.numpy(), np.float32).ravel() for v in self._variables])
        if self.session.rank != 0:
            flat[:] = 0.0
        comm.allreduce(flat, op="sum")
        offset = 0
        for v, n, shape in zip(self._variables, self._sizes, self._shapes, strict=True):
            v.assign(flat[offset : offset + n].reshape(shape))
            offset += n

    # -- control -------------------------------------------------------------------------
    def _agree(self) -> tuple[list[dict], int]:
        """The commands every worker has received (to apply now, in order) and the newest
        cluster version every worker has been told about."""
        session = self.session
        received = [float(session.received_seq()), float(session.latest_cluster_version())]
        comm = session.communicator
        ahead, self._agreed_ahead = self._agreed_ahead, None
        if ahead is not None and ahead[0] == session.cluster_version:
            # Agreed in the last step's gradient allreduce (same version, so every member
            # carried the same slots and reads the same minimum).
            received = [float(ahead[1]), float(ahead[2])]
        elif comm is not None:
            buf = np.array(received, dtype=np.float64)
            comm.allreduce(buf, op="min")
            received = [float(v) for v in buf]
        seq, version = int(received[0]), int(received[1])
        commands = session.take_commands(seq) if seq > self.applied_seq else []
        self.applied_seq = max(self.applied_seq, seq)
        return commands, version

    def _agree_on_commands(self) -> list[dict]:
        return self._agree()[0]

    # -- elasticity ----------------------------------------------------------------------
    def _state_variables(self) -> tuple[list, list]:
        """Everything a joiner needs, split into float32 variables and the rest."""
        variables = list(self.model.weights) + list(self.optimizer.variables)
        floats = [v for v in variables if str(v.dtype).endswith("float32")]
        others = [v for v in variables if not str(v.dtype).endswith("float32")]
        return floats, others

    def _sync_state(self) -> None:
        """Make every member hold rank 0's model, optimizer state, step, parameters and
        data position (rank 0 of a new version is always a worker that was training)."""
        comm = self.session.communicator
        if comm is None:
            return
        floats, others = self._state_variables()
        n_floats = sum(int(np.prod(v.shape)) for v in floats)
        epoch, position = self._sampler.state() if self._sampler else (0, 0)
        meta = np.array(
            [
                self.step,
                self.batch_size,
                self.lr,
                epoch,
                position,
                self.applied_seq,
                STRATEGIES.index(self.strategy),
                TOPOLOGIES.index(self.topology),
                float(self.paused),
                n_floats,
                len(others),
                *self.noise.state(),
            ],
            dtype=np.float64,
        )
        comm.broadcast(meta, root=0)
        if int(meta[9]) != n_floats or int(meta[10]) != len(others):
            raise RuntimeError(
                f"rank 0's model has {int(meta[9])} float32 state values, this worker's "
                f"{n_floats}: every worker must build the same model and optimizer"
            )
        flat = (
            np.concatenate([np.asarray(v.numpy(), np.float32).ravel() for v in floats])
            if floats
            else np.zeros(0, np.float32)
        )
        comm.broadcast(flat, root=0)
        rest = np.array(
            [
                float(np.asarray(v.numpy()).ravel()[0]) if int(np.prod(v.shape)) == 1 else 0.0
                for v in others
            ],
            dtype=np.float64,
        )
        comm.broadcast(rest, root=0)
        if self.session.rank != 0:
            offset = 0
            for v in floats:
                n = int(np.prod(v.shape))
                v.assign(flat[offset : offset + n].reshape(v.shape))
                offset += n
            for v, value in zip(others, rest, strict=True):
                if int(np.prod(v.shape)) == 1:
                    v.assign(np.asarray(value).astype(str(v.dtype)).reshape(v.shape))
            self.step = int(meta[0])
            self.batch_size = int(meta[1])
            self.lr = float(meta[2])
            self.optimizer.learning_rate.assign(self.lr)
            if self._sampler is not None:
                self._sampler.seek(int(meta[3]), int(meta[4]))
            self.applied_seq = int(meta[5])
            self.session.discard_commands(self.applied_seq)
            self.strategy = STRATEGIES[int(meta[6])]
            self.topology = TOPOLOGIES[int(meta[7])]
            self.paused = bool(meta[8])
            # The noise estimate too: the adascale rule must give every worker the same lr.
            self.noise.load_state(list(meta[11:16]))
        if comm.algorithm != self.topology:
            comm.set_algorithm(self.topology)

    def _enter_version(
        self, version: int, members: list[str], *, since: float, recovering: bool = False
    ) -> bool:
        """Switch to cluster ``version``: leave (False) when not a member, else connect to
        its members and take rank 0's state (True). ``since``: when training stopped.

        A planned shrink skips the state transfer: the members all come from the previous
        version and stopped at the same step boundary, so they already agree. Every
        member reaches the same decision (a joiner is never in the previous version)."""
        session = self.session
        previous = set(session.peers) if not session.joining else set()
        if session.address not in members:
            session.close_communicator()
            session.send({"type": "left", "version": version, "step": self.step})
            try:
                # What remains (TensorFlow's teardown) must not take CPU from the members
                # that go on training on this node.
                os.nice(19)
            except OSError:
                pass
            session.left = True
            session.rank = -1
            self.stopped = True
            return False
        session.form_communicator(version, members, self.topology)
        if recovering or not set(members) <= previous:
            self._sync_state()
        session.send(
            {
                "type": "rescaled",
                "version": version,
                "rank": session.rank,
                "size": session.size,
                "step": self.step,
                "paused_s": time.perf_counter() - since,
            }
        )
        return True

    def _recover(self, error: Exception) -> bool:
        """A collective failed (a peer died or went silent): wait for the next cluster
        version and continue in it. False when this worker was left out of it."""
        session = self.session
        failed_at = time.perf_counter()
        failed_version = session.cluster_version
        from agent.native import CollectiveError

        while True:
            found = session.next_version_after(
                failed_version,
                f"a collective failed ({error})",
                error,
                timeout_s=session.rejoin_timeout_s,
            )
            try:
                return self._enter_version(*found, since=failed_at, recovering=True)
            except CollectiveError as again:  # a member of the new version failed too
                error, failed_version = again, found[0]

    def _join(self, x: np.ndarray, y: np.ndarray) -> None:
        """A warm standby: trace the training step (one throw-away step on a few samples:
        the members' state replaces its effect), wait until a cluster version lists this
        worker, then take over the members' state."""
        session = self.session
        tf = self.tf
        few = np.arange(min(len(x), max(1, self.batch_size // max(session.size, 2))))
        flat = self._compute(
            tf.constant(x[few]), tf.constant(y[few]), tf.constant(1.0 / len(few), tf.float32)
        )
        self._apply(tf.constant(flat.numpy()[:-3]))
        if self.fused_step:  # and the one-call S-SGD step a member runs
            for monitor in (True, False):
                self._run_fused(x[few], y[few], len(few), monitor, 1.0, True)
        session.send({"type": "standby", "address": session.address})
        found = session.wait_for_cluster(
            min_version=session.cluster_version, timeout_s=None, member=session.address
        )
        if found is None:
            raise SystemExit("the agent went away before this standby worker was let in")
        version, members = found
        self._enter_version(version, members, since=time.perf_counter())

    def _apply_command(self, command: dict) -> None:
        action = command.get("action")
        value = (command.get("payload") or {}).get("value")
        if action in AGENT_ACTIONS or (
            action == "stop" and "joiners" in (command.get("payload") or {})
        ):
            # Carried out by the control plane and the agents (a resize; ending abandoned
            # standbys): only its sequence number counts here.
            return
        try:
            if action == "set_batch_size":
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f"batch size must be a positive integer, got {value!r}")
                rule = self.session.hyperparameters.get("lr_scaling", "none")
                new_lr = scaled_lr(
                    self.lr,
                    old_batch=self.batch_size,
                    new_batch=value,
                    rule=rule,
                    gns=self.noise.values().get("gns"),
                )
                self.batch_size = value
                if new_lr != self.lr:
                    self.lr = new_lr
                    self.optimizer.learning_rate.assign(self.lr)
                self.session.report({"batch_size": value}, step=self.step, per_rank=True)
            elif action == "set_lr":
                if not isinstance(value, (int, float)) or value <= 0:
                    raise ValueError(f"learning rate must be positive, got {value!r}")
                self.lr = float(value)
                self.optimizer.learning_rate.assign(self.lr)
            elif action == "set_strategy":
                if value not in STRATEGIES:
                    raise ValueError(
                        f"strategy {value!r} is not supported by this runtime; use "
                        f"{' or '.join(STRATEGIES)}"
                    )
                if value == "ssgd" and self.strategy != "ssgd":
                    # S-SGD needs identical models and optimizer slots (momentum):
                    # finish SMA or pair averaging with a full average of both.
                    self._average_weights(alpha=1.0)
                    self._average_optimizer_state()
                self.strategy = value
            elif action == "set_topology":
                if value not in TOPOLOGIES:
                    raise ValueError(
                        f"topology must be one of {', '.join(TOPOLOGIES)}, got {value!r}"
                    )
                if self.session.communicator is not None:
                    # Every worker reaches this at the same step, so the collective switch lines up.
                    self.session.communicator.set_algorithm(value)
                self.topology = value
            elif action == "stop":
                self.stopped = True
            elif action == "pause":
                self.paused = True
            elif action == "resume":
                self.paused = False
            elif action == "checkpoint":
                self.checkpoint()
            else:
                raise ValueError(f"action {action!r} is not supported by this runtime yet")
        except ValueError as exc:
            self.session.send(
                {
                    "type": "failed",
                    "id": command.get("id"),
                    "seq": command.get("seq"),
                    "error": str(exc),
                }
            )
            return
        # The learning rate in force, so the control plane records exactly what the workers
        # use (a batch-size change may have scaled it, e.g. by the adascale gain).
        self.session.send(
            {
                "type": "applied",
                "id": command.get("id"),
                "seq": command.get("seq"),
                "step": self.step,
                "lr": self.lr,
            }
        )

    # -- model averaging (SMA) ---------------------------------------------------------
    def _weights_flat(self) -> np.ndarray:
        return np.concatenate([np.asarray(v.numpy(), np.float32).ravel() for v in self._variables])

    def _set_weights_flat(self, flat: np.ndarray) -> None:
        offset = 0
        for v, n, shape in zip(self._variables, self._sizes, self._shapes, strict=True):
            v.assign(flat[offset : offset + n].reshape(shape))
            offset += n

    def _average_weights(
        self, *, alpha: float, extra: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Pull every worker's model ``alpha`` of the way to the average of all models.
        ``extra`` values ride along in the same allreduce and come back summed."""
        comm = self.session.communicator
        if comm is None:
            return extra
        weights = self._weights_flat()
        tail = extra if extra is not None else np.zeros(0, np.float32)
        buffer = np.concatenate([weights, tail.astype(np.float32)])
        comm.allreduce(buffer, op="sum")
        average = buffer[: weights.size] / self.session.size
        self._set_weights_flat((1.0 - alpha) * weights + alpha * average)
        return buffer[weights.size :]

    def _average_optimizer_state(self) -> None:
        comm = self.session.communicator
        slots = [v for v in self.optimizer.variables if str(v.dtype).endswith("float32")]
        if comm is None or not slots:
            return
        flat = np.concatenate([np.asarray(v.numpy(), np.float32).ravel() for v in slots])
        comm.allreduce(flat, op="sum")
        flat /= self.session.size
        offset = 0
        for v in slots:
            n = int(np.prod(v.shape))
            v.assign(flat[offset : offset + n].reshape(v.shape))
            offset += n

    def _pair_average(self, comm, rank: int, size: int) -> None:
        """Average this worker's model with a random peer's latest published one."""
        weights = self._weights_flat()
        if self._pair_version != self.session.cluster_version:
            # First pair step in this version: everyone publishes before anyone asks.
            comm.publish("model", weights)
            comm.barrier()
            self._pair_version = self.session.cluster_version
        rng = np.random.default_rng([self.seed, self.step, rank])
        peer = (rank + 1 + int(rng.integers(size - 1))) % size
        theirs = np.empty_like(weights)
        comm.request(peer, "model", theirs)
        weights = 0.5 * (weights + theirs)
        self._set_weights_flat(weights)
        comm.publish("model", weights)

    # -- checkpoints ---------------------------------------------------------------------
    def _state_arrays(self) -> list:
        return list(self.model.weights) + list(self.optimizer.variables)

    def checkpoint(self) -> Path | None:
        """Write weights, optimizer slots, step, batch size, lr and data position to
        ``<checkpoint_dir>/step-<N>/`` (rank 0 writes; all ranks hold the same state).
        Written to a temporary folder and renamed, so a crash never leaves half a checkpoint."""
        directory = self.session.hyperparameters.get("checkpoint_dir")
        if not directory:
            raise ValueError("the job names no checkpoint_dir (a hyper-parameter)")
        if self.session.rank != 0:
            return None
        target = Path(directory) / f"step-{self.step:09d}"
        tmp = target.with_name(target.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        np.savez(tmp / "state.npz", *[np.asarray(v.numpy()) for v in self._state_arrays()])
        meta = {
            "step": self.step,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "epoch": self._sampler.epoch if self._sampler else 0,
            "position": self._sampler.position if self._sampler else 0,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        if target.exists():
            import shutil

            shutil.rmtree(target)
        tmp.rename(target)
        self.session.report({"checkpoint_step": self.step}, step=self.step)
        return target

    def restore(self, path: str | Path, n_samples: int) -> None:
        """Resume from a checkpoint folder (every rank reads it; it must be reachable
        from every node, or the job must run on the node that wrote it)."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        with np.load(path / "state.npz") as state:
            arrays = [state[f"arr_{i}"] for i in range(len(state.files))]
        targets = self._state_arrays()
        if len(arrays) != len(targets):
            raise ValueError(
                f"checkpoint {path} holds {len(arrays)} arrays; this model and optimizer "
                f"have {len(targets)}"
            )
        for variable, value in zip(targets, arrays, strict=True):
            variable.assign(value)
        self.step = int(meta["step"])
        self.batch_size = int(meta["batch_size"])
        self.lr = float(meta["lr"])
        self.optimizer.learning_rate.assign(self.lr)
        self._sampler = GlobalBatchSampler(n_samples, self.seed)
        self._sampler.seek(int(meta["epoch"]), int(meta["position"]))

    # -- the loop ------------------------------------------------------------------------
    def _boundary(self) -> bool:
        """A step boundary: apply the commands every worker has, switch to a newer cluster
        version every worker knows of, and stay here while paused. False: stop training."""
        while True:
            commands, version = self._agree()
            for command in commands:
                self._apply_command(command)
            if version > self.session.cluster_version and not self.stopped:
                members = self.session.cluster_members(version)
                if not self._enter_version(version, members, since=time.perf_counter()):
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
        """Train until step ``steps``, reporting metrics every ``log_every`` steps and updating
        the gradient-noise monitor every ``monitor_every`` steps (0 turns it off); with
        ``resume_from``, continue from that checkpoint folder."""
        tf = self.tf
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.ascontiguousarray(y, dtype=np.int32)
        if self._compute is None:
            self._build(x)
        if self._sampler is None or self._sampler.n_samples != len(x):
            self._sampler = GlobalBatchSampler(len(x), self.seed)
        if resume_from and not self.session.joining:
            self.restore(resume_from, len(x))
        session = self.session
        if session.joining:
            self._join(x, y)
        window_start, window_samples = time.perf_counter(), 0
        compute_time = comm_time = 0.0
        loss_sum = correct_sum = 0.0
        seen = 0
        noise = self.noise
        session.report({"batch_size": self.batch_size}, step=self.step, per_rank=True)
        checkpoint_every = int(session.hyperparameters.get("checkpoint_every", 0) or 0)
        from agent.native import CollectiveError

        while self.step < steps and not self.stopped:
            data_position = self._sampler.state()
            version = session.cluster_version
            try:
                if not self._boundary():
                    break
                if session.cluster_version != version:
                    window_start, window_samples = time.perf_counter(), 0
                    compute_time = comm_time = 0.0
                comm, rank, size = session.communicator, session.rank, session.size
                if checkpoint_every and self.step and self.step % checkpoint_every == 0:
                    self.checkpoint()
                batch = self._sampler.next(self.batch_size)
                batch_epoch = self._sampler.epoch
                mine = GlobalBatchSampler.shard(batch, rank, size)
                t0 = time.perf_counter()
                monitoring = monitor_every > 0 and size > 1 and self.step % monitor_every == 0
                # This worker's gradient is scaled by 1/B; its own mean gradient is B/n times it.
                local_scale = len(batch) / len(mine) if len(mine) else 0.0
                if self.fused_step and (self.strategy == "ssgd" or comm is None):
                    out = self._run_fused(
                        x[mine], y[mine], len(batch), monitoring, local_scale**2, comm is not None
                    )
                    t2 = time.perf_counter()
                    t1 = t2 - self._step_comm_s
                    flat = out[:3]  # loss sum, correct count, summed squared local norms
                    big_sq = float(out[3])
                else:
                    flat = self._compute(
                        tf.constant(x[mine]),
                        tf.constant(y[mine]),
                        tf.constant(1.0 / len(batch), tf.float32),
                    ).numpy()
                    grads = flat[:-3]
                    if monitoring and len(mine):
                        flat[-1] = float(np.dot(grads, grads)) * local_scale**2
                    t1 = time.perf_counter()
                    if self.strategy == "pair" and comm is not None:
                        monitoring = False
                        self._pair_average(comm, rank, size)
                        comm.allreduce(flat[-3:-1], op="sum")  # the loss counters, for reporting
                        t2 = time.perf_counter()
                        self._apply(tf.constant(grads * local_scale))
                    elif self.strategy == "sma" and comm is not None:
                        # Average the models (and sum the loss counters in the same call), then
                        # take this worker's own step: B/n times its gradient is the mean
                        # gradient of its own samples.
                        monitoring = False
                        flat[-3:-1] = self._average_weights(
                            alpha=self.sma_alpha, extra=flat[-3:-1].copy()
                        )
                        t2 = time.perf_counter()
                        self._apply(tf.constant(grads * local_scale))
                    else:
                        if comm is not None:
                            comm.allreduce(flat, op="sum")
                        t2 = time.perf_counter()
                        self._apply(tf.constant(grads))
                    big_sq = float(np.dot(grads, grads)) if monitoring else 0.0
                if monitoring:
                    noise.update(
                        small_sq_norm=float(flat[-1]) / size,
                        small_batch=len(batch) / size,
                        big_sq_norm=big_sq,
                        big_batch=len(batch),
                    )
                compute_time += (t1 - t0) + (time.perf_counter() - t2)
                comm_time += t2 - t1
                loss_sum += float(flat[-3])
                correct_sum += float(flat[-2])
                seen += len(batch)
                window_samples += len(batch)
                if self.on_batch is not None:
                    self.on_batch(self.step, batch_epoch, mine)
                self.step += 1
                if self.step % log_every == 0 or self.step == steps:
                    elapsed = time.perf_counter() - window_start
                    per_rank = {"batch_size": self.batch_size}
                    if size > 1:
                        # Lets anyone check that workers hold the same model where the strategy says so.
                        per_rank["param_checksum"] = float(self._checksum())
                    session.report(per_rank, step=self.step, per_rank=True)
                    if rank == 0:
                        steps_in_window = (
                            log_every if self.step % log_every == 0 else self.step % log_every
                        )
                        session.report(
                            {
                                "loss": loss_sum / max(seen, 1),
                                "accuracy": correct_sum / max(seen, 1),
                                "throughput": window_samples / elapsed if elapsed > 0 else 0.0,
                                "batch_size": self.batch_size,
                                "lr": self.lr,
                                "workers": size,
                                "step_time": elapsed / steps_in_window,
                                "compute_time": compute_time / steps_in_window,
                                "comm_time": comm_time / steps_in_window,
                                **noise.values(),
                            },
                            step=self.step,
                        )
                    window_start, window_samples = time.perf_counter(), 0
                    compute_time = comm_time = 0.0
                    loss_sum = correct_sum = 0.0
                    seen = 0
            except CollectiveError as exc:
                # Nothing of this step was applied (every collective comes before the
                # update): take its batch again in the next version.
                self._sampler.seek(*data_position)
                if not self._recover(exc):
                    break
                window_start, window_samples = time.perf_counter(), 0
                compute_time = comm_time = 0.0
                continue


# -- building blocks for a custom training step ------------------------------------------
def broadcast_variables(variables, session: Session, root: int = 0) -> None:
    """Give every worker rank ``root``'s values of ``variables`` (call eagerly, once every
    worker created them: e.g. the model's and the optimizer's after a first build)."""
    comm = session.communicator
    if comm is None:
        return
    for group in _by_dtype(list(variables)).values():
        flat = np.concatenate([np.asarray(v.numpy()).ravel() for v in group])
        comm.broadcast(flat, root=root)
        offset = 0
        for v in group:
            n = int(np.prod(v.shape))
            v.assign(flat[offset : offset + n].reshape(v.shape))
            offset += n


def allreduce_gradients(gradients: list, session: Session, op: str = "mean") -> list:
    """Average (or sum, …) a list of gradient tensors across workers, fused into one
    native allreduce per dtype. Works eagerly and inside ``tf.function`` (the reduction
    runs as a ``tf.numpy_function``, with the GIL released during the transfer)."""
    import tensorflow as tf

    if session.communicator is None:
        return list(gradients)
    out = list(gradients)
    groups: dict[str, list[int]] = {}
    for index, g in enumerate(gradients):
        groups.setdefault(g.dtype.name, []).append(index)

    def reduce(flat: np.ndarray) -> np.ndarray:
        flat = np.array(flat, copy=True)
        session.communicator.allreduce(flat, op=op)
        return flat

    for indices in groups.values():
        parts = [tf.reshape(gradients[i], [-1]) for i in indices]
        flat = tf.concat(parts, axis=0)
        reduced = tf.numpy_function(reduce, [flat], flat.dtype, stateful=True)
        reduced.set_shape(flat.shape)
        pieces = tf.split(reduced, [tf.size(p) for p in parts]) if len(parts) > 1 else [reduced]
        for i, piece in zip(indices, pieces, strict=True):
            out[i] = tf.reshape(piece, tf.shape(gradients[i]))
    return out


class DistributedOptimizer:
    """A Keras optimizer whose ``apply_gradients`` first averages the gradients across
    the job's workers (S-SGD), for scripts that write their own (``tf.function``)
    training step instead of using :class:`Trainer`::

        optimizer = runtime.DistributedOptimizer(keras.optimizers.SGD(0.05), session)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))

    Build the model and the optimizer, then call :func:`broadcast_variables` so every
    worker starts from rank 0's weights. Each worker feeds its own shard of the global
    batch (``GlobalBatchSampler.shard``) and computes the mean loss of its shard; with
    equal shards the averaged gradient is the global batch's. Live commands, elasticity
    and monitors are :class:`Trainer`'s; this wrapper only synchronises gradients.
    Every other attribute is the wrapped optimizer's."""

    def __init__(self, optimizer, session: Session):
        self._optimizer = optimizer
        self._session = session

    def apply_gradients(self, grads_and_vars):
        pairs = list(grads_and_vars)
        grads = allreduce_gradients([g for g, _ in pairs], self._session)
        return self._optimizer.apply_gradients(zip(grads, [v for _, v in pairs], strict=True))

    def __getattr__(self, name):
        return getattr(self._optimizer, name)


def _by_dtype(variables: list) -> dict[str, list]:
    groups: dict[str, list] = {}
    for v in variables:
        groups.setdefault(str(v.dtype), []).append(v)
    return groups


def evaluate_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    logits = model(np.asarray(x, np.float32), training=False)
    return float(np.mean(np.argmax(np.asarray(logits), axis=1) == y))


__all__ = [
    "DistributedOptimizer",
    "GlobalBatchSampler",
    "Session",
    "Trainer",
    "allreduce_gradients",
    "broadcast_variables",
    "configure_tensorflow_threads",
    "evaluate_accuracy",
    "init",
]
