"""Live commands on the worker side: taken once, agreed on by every worker, then applied.

Commands (``set_batch_size``, ``set_lr``, ``stop``, …) reach each worker with the job's
sequence number, at least once and possibly at different times on different workers
(the frames are :mod:`agent.protocol`'s; ``docs/protocols.md`` describes them). Three
steps turn that into every worker applying the same commands at the same step:

1. **Inbox** (:class:`CommandInbox`, the reader thread's side). A command is taken once by
   its seq whatever the agent redelivers; the highest seq received without a gap is what
   this worker can vouch for. The reply it sent for an applied command is kept, so a
   redelivery after an agent restart is answered again instead of applied twice.
2. **Agreement** (:class:`Agreement`, at each step boundary). The workers allreduce(min)
   the highest gap-free seq (and the newest cluster version) each has; every worker then
   takes exactly the commands up to that minimum. In S-SGD's fused step the same values
   ride in per-rank slots of the gradient allreduce, so the boundary needs no collective
   of its own.
3. **Dispatch** (:func:`apply`): ``action -> handler`` over the trainer's knobs; a handler
   raises ``ValueError`` for a value it refuses, which the worker reports as ``failed``.

Framework-neutral: no TensorFlow here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.protocol import vocabulary as v
from agent.protocol.worker import AppliedLine, CommandLine, FailedLine
from agent.runtime.scaling import scaled_lr

if TYPE_CHECKING:
    from agent.runtime.session import Session
    from agent.runtime.trainer import Trainer

MAX_KEPT_REPLIES = 1000  # command replies a worker keeps to answer redeliveries
# Per-rank float32 slots the agreement takes at the end of the fused step's gradient buffer.
SLOTS_PER_RANK = 4
# Commands that reach the workers only to keep the job's command sequence gap-free: the
# control plane and the agents carry them out. (So is a ``stop`` listing ``joiners``: the
# agents end those abandoned standbys, the members train on.)
AGENT_ACTIONS = v.AGENT_ACTIONS
Reply = AppliedLine | FailedLine


class CommandInbox:
    """The commands this worker received and has not applied yet, by seq; thread-safe (the
    agent's reader thread puts, the training loop takes)."""

    def __init__(self, first_seq: int = 0):
        self._lock = threading.Lock()
        self._waiting: dict[int, CommandLine] = {}
        self._contiguous_seq = first_seq  # every seq up to this one was received
        self._replies: dict[int, Reply] = {}  # seq -> the applied/failed sent for it

    def receive(self, command: CommandLine) -> Reply | None:
        """Take a command in, once: one whose seq was received before (still waiting, or
        applied) is a redelivery. Returns the reply to send again for an answered one."""
        seq = command.seq
        with self._lock:
            duplicate = seq <= self._contiguous_seq or seq in self._waiting
            if not duplicate:
                self._waiting[seq] = command
                while self._contiguous_seq + 1 in self._waiting:
                    self._contiguous_seq += 1
            reply = self._replies.get(seq) if duplicate else None
        if reply is not None and reply.id == command.id:
            return reply
        return None

    def keep_reply(self, reply: Reply) -> None:
        """Keep an ``applied``/``failed`` reply: a command redelivered after an agent
        restart is answered again (the reply may have died with the old agent)."""
        with self._lock:
            self._replies[reply.seq] = reply
            if len(self._replies) > MAX_KEPT_REPLIES:
                del self._replies[min(self._replies)]

    def received_seq(self) -> int:
        """The highest seq up to which every command was received."""
        with self._lock:
            return self._contiguous_seq

    def take(self, up_to_seq: int) -> list[CommandLine]:
        """Remove and return, in order, the commands with seq ≤ up_to_seq."""
        with self._lock:
            ready = sorted(s for s in self._waiting if s <= up_to_seq)
            return [self._waiting.pop(s) for s in ready]

    def discard(self, up_to_seq: int) -> None:
        """Forget commands already applied (by the members a joiner caught up with)."""
        with self._lock:
            for seq in [s for s in self._waiting if s <= up_to_seq]:
                del self._waiting[seq]
            self._contiguous_seq = max(self._contiguous_seq, up_to_seq)
            while self._contiguous_seq + 1 in self._waiting:
                self._contiguous_seq += 1


class Agreement:
    """Step-boundary consensus of one trainer: the commands every worker has received and
    the newest cluster version every worker has been told about."""

    def __init__(self, session: Session, applied_seq: int):
        self.session = session
        self.applied_seq = applied_seq  # the last command applied
        # How long the last in-step allreduce took (the fused step's communication time).
        self.step_comm_s = 0.0
        self._inbox = session.commands
        self._membership = session.membership
        # Set by allreduce_in_step: (cluster version, min received seq, min known version).
        self._ahead: tuple[int, int, int] | None = None

    def agree(self) -> tuple[list[CommandLine], int]:
        """The commands to apply now (in order) and the newest cluster version every worker knows."""
        session = self.session
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == session.cluster_version:
            # Agreed in the last step's gradient allreduce (same version, so every member
            # carried the same slots and reads the same minimum).
            seq, version = ahead[1], ahead[2]
        else:
            seq = self._inbox.received_seq()
            version = self._membership.latest_cluster_version()
            comm = session.communicator
            if comm is not None:
                buf = np.array([seq, version], dtype=np.float64)
                comm.allreduce(buf, op="min")
                seq, version = int(buf[0]), int(buf[1])
        commands = self._inbox.take(seq) if seq > self.applied_seq else []
        self.applied_seq = max(self.applied_seq, seq)
        return commands, version

    def allreduce_in_step(self, flat: np.ndarray) -> np.ndarray:
        """The gradient allreduce (sum) of a compiled step, which calls it from inside the
        step. Each worker's received command seq and known cluster version go in its
        ``SLOTS_PER_RANK`` slots at the end of the buffer, so the sum carries every worker's
        values and the minimum (what :meth:`agree` needs at the next step boundary) costs
        no collective of its own. Each value is split into two 20-bit halves, which float32
        holds exactly. Without a communicator (a standby tracing its step) the gradients
        come back as they are."""
        session = self.session
        comm = session.communicator
        if comm is None:
            return flat
        t0 = time.perf_counter()
        size, rank = session.size, session.rank
        if flat.size < SLOTS_PER_RANK * size:
            raise RuntimeError("the fused step was called without room for the command agreement")
        buf = flat if flat.flags.writeable and flat.flags.c_contiguous else flat.copy()
        slots = buf[buf.size - SLOTS_PER_RANK * size :]
        seq, version = self._inbox.received_seq(), self._membership.latest_cluster_version()
        # Scalar writes and one tolist() below: on a small model this runs in every
        # step's critical path, where a dozen NumPy calls on 4·size values cost more than
        # the allreduce of the whole buffer.
        slots.fill(0.0)
        at = SLOTS_PER_RANK * rank
        slots[at] = seq >> 20
        slots[at + 1] = seq & 0xFFFFF
        slots[at + 2] = version >> 20
        slots[at + 3] = version & 0xFFFFF
        comm.allreduce(buf, op="sum")
        v = [int(x) for x in slots.tolist()]
        self._ahead = (
            session.cluster_version,
            min((v[i] << 20) | v[i + 1] for i in range(0, len(v), SLOTS_PER_RANK)),
            min((v[i + 2] << 20) | v[i + 3] for i in range(0, len(v), SLOTS_PER_RANK)),
        )
        self.step_comm_s = time.perf_counter() - t0
        return buf


# -- dispatch: action -> handler ------------------------------------------------------
# A handler gets the trainer and the command's ``payload["value"]``; it raises ValueError
# for a value it refuses (the worker answers ``failed`` with the message).


def _set_batch_size(trainer: Trainer, value: Any) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"batch size must be a positive integer, got {value!r}")
    new_lr = scaled_lr(
        trainer.lr,
        old_batch=trainer.batch_size,
        new_batch=value,
        rule=trainer.session.hyperparameters.get("lr_scaling", "none"),
        gns=trainer.noise.values().get("gns"),
    )
    trainer.batch_size = value
    if new_lr != trainer.lr:
        trainer.set_lr(new_lr)
    trainer.session.report({"batch_size": value}, step=trainer.step, per_rank=True)


def _set_lr(trainer: Trainer, value: Any) -> None:
    if not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"learning rate must be positive, got {value!r}")
    trainer.set_lr(float(value))


def _set_strategy(trainer: Trainer, value: Any) -> None:
    trainer.set_strategy(value)


def _set_topology(trainer: Trainer, value: Any) -> None:
    trainer.set_topology(value)


def _stop(trainer: Trainer, value: Any) -> None:
    trainer.stopped = True


def _pause(trainer: Trainer, value: Any) -> None:
    trainer.paused = True


def _resume(trainer: Trainer, value: Any) -> None:
    trainer.paused = False


def _checkpoint(trainer: Trainer, value: Any) -> None:
    trainer.checkpoint()


HANDLERS: dict[str, Callable[[Trainer, Any], None]] = {
    v.SET_BATCH_SIZE: _set_batch_size,
    v.SET_LR: _set_lr,
    v.SET_STRATEGY: _set_strategy,
    v.SET_TOPOLOGY: _set_topology,
    v.STOP: _stop,
    v.PAUSE: _pause,
    v.RESUME: _resume,
    v.CHECKPOINT: _checkpoint,
}


def apply(trainer: Trainer, command: CommandLine) -> None:
    """Apply one agreed command and answer it (``applied`` with the step and the learning
    rate in force, or ``failed`` with why)."""
    action, payload = command.action, command.payload
    if action in AGENT_ACTIONS or (action == v.STOP and "joiners" in payload):
        # Carried out by the control plane and the agents (a resize; ending abandoned
        # standbys): only its sequence number counts here.
        return
    handler = HANDLERS.get(action)
    try:
        if handler is None:
            raise ValueError(f"action {action!r} is not supported by this runtime yet")
        handler(trainer, payload.get("value"))
    except ValueError as exc:
        trainer.session.send_failed(command, str(exc))
        return
    # The learning rate in force, so the control plane records exactly what the workers
    # use (a batch-size change may have scaled it, e.g. by the adascale gain).
    trainer.session.send_applied(command, step=trainer.step, lr=trainer.lr)
