"""Elastic membership: cluster versions, their communicators, and a worker's moves between them.

A worker is identified by the address it listens on; its rank in a cluster version is
its index in that version's members. The agent announces new versions (the control
plane writes one for every resize, and after a member died); :class:`Membership` keeps
what was announced and forms the communicator of the version the worker trains in. The
training loop switches to the newest version every worker knows of at a step boundary
(agreed like commands, :mod:`agent.runtime.commands`), and then:

- **leaves** when the new version does not list it (reports ``left``, exits with 0);
- **re-forms** the communicator; members that are new to the version (a grow, or any
  change after a failure) take rank 0's model, optimizer state, step, parameters and
  data position, so nothing of a step is lost or applied twice;
- **recovers** after a collective failed (a peer died or went silent): it reports
  ``peer_failed`` and waits for the next version, then continues in it from the new
  rank 0's state (the failed step's batch is taken again);
- **joins** as a warm standby: a worker started with ``ADAPTRAIN_JOINING=1`` builds and
  traces its step first, reports ``standby``, and is let in by the first version that
  lists it.

Forming the very first communicator can itself be overtaken: a member that dies before
the group formed would leave the others waiting until the collective timeout. A newer
version announced meanwhile interrupts the formation at once (the reader thread signals
the main thread with ``SUPERSEDED_SIGNAL``). The messages are :mod:`agent.protocol`'s;
``docs/protocols.md`` describes them. Framework-neutral: no TensorFlow here.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.protocol import vocabulary as v
from agent.protocol.worker import ClusterLine
from agent.runtime.strategies import STRATEGIES

if TYPE_CHECKING:
    from agent.runtime.session import Session
    from agent.runtime.trainer import Trainer

# Allreduce algorithms of the native library, switched collectively at a step boundary.
TOPOLOGIES = v.TOPOLOGIES  # a joiner receives the topology as an index into this
# The ring in an order chosen by probing the paths (agent.runtime.routing): the native
# ring with a ring order.
ROUTED_RING = "routed_ring"


def native_algorithm(topology: str) -> str:
    """The native library's algorithm for a topology."""
    return "ring" if topology == ROUTED_RING else topology


# Interrupts the main thread's blocked formation of a communicator that a newer cluster
# version has superseded (see Membership.form_first_communicator).
SUPERSEDED_SIGNAL = signal.SIGUSR1


class SupersededVersion(Exception):
    """Forming a cluster version's communicator was abandoned: a newer version came."""


class Membership:
    """The cluster versions announced to one worker, and the communicator of its own.

    The worker's place in its version (``rank``, ``size``, ``peers``, ``cluster_version``,
    ``communicator``) lives on its :class:`~agent.runtime.session.Session`, where the
    training loop reads it every step; this object changes it."""

    def __init__(self, session: Session):
        self._session = session
        self._clusters: dict[int, list[str]] = {}  # version -> members, as announced
        self._changed = threading.Condition()
        self._agent_gone = False  # no agent will announce anything any more
        self._forming: int | None = None  # the version whose communicator the main thread forms

    # -- announcements (the agent's reader thread) ----------------------------------
    def receive_cluster(self, line: ClusterLine) -> None:
        """A cluster version announced (the protocol checked its form: a version and a
        non-empty list of members)."""
        version, members = line.version, line.members
        with self._changed:
            if version in self._clusters or version < self._session.cluster_version:
                return  # known already (redelivered after an agent restart) or superseded
            self._clusters[version] = list(members)
            self._changed.notify_all()
            superseded = self._forming is not None and version > self._forming
        if superseded:
            signal.pthread_kill(threading.main_thread().ident, SUPERSEDED_SIGNAL)

    def agent_gone(self) -> None:
        """No agent will send anything any more: waits for a cluster version end."""
        with self._changed:
            self._agent_gone = True
            self._changed.notify_all()

    def latest_cluster_version(self) -> int:
        """The highest cluster version announced to this worker (its own if none newer)."""
        with self._changed:
            return max([self._session.cluster_version, *self._clusters])

    def cluster_members(self, version: int) -> list[str]:
        with self._changed:
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

        with self._changed:
            while True:
                result = found()
                if result is not None or self._agent_gone:
                    return result
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._changed.wait(remaining if remaining is not None else 1.0)

    # -- communicators (the main thread) ----------------------------------------------
    def form_communicator(self, version: int, members: list[str], algorithm: str = "auto") -> None:
        """Leave the current communicator and build the one of cluster ``version``
        (blocks until every member connected)."""
        session = self._session
        if session.communicator is not None:
            session.communicator.close()
            session.communicator = None
        session.rank = members.index(session.address)
        session.size = len(members)
        session.peers = list(members)
        session.cluster_version = version
        session.joining = False
        if session.size > 1:
            session.communicator = _new_communicator(
                session.rank, session.peers, version, algorithm
            )

    def close_communicator(self) -> None:
        session = self._session
        if session.communicator is not None:
            try:
                session.communicator.close()
            except Exception:  # noqa: BLE001 - already failed; closing is best effort
                pass
            session.communicator = None

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
            self._session.send_peer_failed(failed, error)
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
        defaults to the session's ``rejoin_timeout_s``."""
        from agent.native import CollectiveError

        session = self._session
        timeout_s = session.rejoin_timeout_s if timeout_s is None else timeout_s
        started_in, since = session.cluster_version, time.perf_counter()
        version, members = session.cluster_version, list(session.peers)
        interruptible = threading.current_thread() is threading.main_thread()
        if interruptible:
            signal.signal(SUPERSEDED_SIGNAL, self._on_superseded)
            # A mask inherited from whatever started this process (the signal mask
            # survives exec) would hold the signal pending until the collective timeout.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {SUPERSEDED_SIGNAL})
        while True:
            try:
                with self._changed:
                    if interruptible:
                        self._forming = version
                    if any(v > version for v in self._clusters):
                        raise SupersededVersion(f"cluster version {version} was superseded")
                try:
                    self.form_communicator(version, members, algorithm)
                finally:
                    with self._changed:
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
                if session.address not in members:
                    session.send_left(version, step=0)
                    session.left, session.rank = True, -1
                    raise SystemExit(0) from None  # the launcher flushes what is left to send
        if version != started_in or version > 1:
            session.send_rescaled(version, step=0, paused_s=time.perf_counter() - since)

    def _on_superseded(self, signum, frame) -> None:
        # Runs in the main thread between bytecodes or from inside the native formation's
        # poll (EINTR); only while forming, so a late signal is harmless.
        if self._forming is not None:
            raise SupersededVersion(f"cluster version {self._forming} was superseded")


def _new_communicator(rank: int, peers: list[str], version: int, algorithm: str):
    from agent.native import Communicator

    algorithm = native_algorithm(algorithm) if algorithm in TOPOLOGIES else "auto"
    try:
        return Communicator(
            rank=rank, peers=peers, timeout_s=None, algorithm=algorithm, cluster_version=version
        )
    except TypeError:  # a native library without cluster versions
        return Communicator(rank=rank, peers=peers, timeout_s=None, algorithm=algorithm)


# -- a trainer's moves between versions ---------------------------------------------------
def enter_version(
    trainer: Trainer, version: int, members: list[str], *, since: float, recovering: bool = False
) -> bool:
    """Switch to cluster ``version``: leave (False) when not a member, else connect to its
    members and take rank 0's state (True). ``since``: when training stopped.

    A planned shrink skips the state transfer: the members all come from the previous
    version and stopped at the same step boundary, so they already agree. Every member
    reaches the same decision (a joiner is never in the previous version)."""
    session = trainer.session
    previous = set(session.peers) if not session.joining else set()
    if session.address not in members:
        session.membership.close_communicator()
        session.send_left(version, step=trainer.step)
        try:
            # What remains (the framework's teardown) must not take CPU from the members
            # that go on training on this node.
            os.nice(19)
        except OSError:
            pass
        session.left = True
        session.rank = -1
        trainer.stopped = True
        return False
    session.membership.form_communicator(version, members, trainer.topology)
    if recovering or not set(members) <= previous:
        transfer_state(trainer)
    session.send_rescaled(version, step=trainer.step, paused_s=time.perf_counter() - since)
    return True


def recover(trainer: Trainer, error: Exception) -> bool:
    """A collective failed (a peer died or went silent): wait for the next cluster version
    and continue in it. False when this worker was left out of it."""
    from agent.native import CollectiveError

    session = trainer.session
    failed_at = time.perf_counter()
    failed_version = session.cluster_version
    while True:
        found = session.membership.next_version_after(
            failed_version,
            f"a collective failed ({error})",
            error,
            timeout_s=session.rejoin_timeout_s,
        )
        try:
            return enter_version(trainer, *found, since=failed_at, recovering=True)
        except CollectiveError as again:  # a member of the new version failed too
            error, failed_version = again, found[0]


def join_as_standby(trainer: Trainer) -> None:
    """A warm standby whose step is traced already: say so, wait until a cluster version
    lists this worker, then take over the members' state."""
    session = trainer.session
    session.send_standby()
    found = session.membership.wait_for_cluster(
        min_version=session.cluster_version, timeout_s=None, member=session.address
    )
    if found is None:
        raise SystemExit("the agent went away before this standby worker was let in")
    version, members = found
    enter_version(trainer, version, members, since=time.perf_counter())


def transfer_state(trainer: Trainer) -> None:
    """Make every member hold rank 0's model, optimizer state, step, parameters and data
    position (rank 0 of a new version is always a worker that was training). The float32
    state travels as one buffer; any other state (an iteration counter) as one float64
    value per scalar variable."""
    session = trainer.session
    comm = session.communicator
    if comm is None:
        return
    arrays = trainer.adapter.state()
    floats = [a for a in arrays if a.dtype == np.float32]
    others = [a for a in arrays if a.dtype != np.float32]
    n_floats = sum(a.size for a in floats)
    epoch, position = trainer.sampler.state() if trainer.sampler else (0, 0)
    meta = np.array(
        [
            trainer.step,
            trainer.batch_size,
            trainer.lr,
            epoch,
            position,
            trainer.agreement.applied_seq,
            STRATEGIES.index(trainer.strategy.name),
            TOPOLOGIES.index(trainer.topology),
            float(trainer.paused),
            n_floats,
            len(others),
            *trainer.noise.state(),
        ],
        dtype=np.float64,
    )
    comm.broadcast(meta, root=0)
    if int(meta[9]) != n_floats or int(meta[10]) != len(others):
        raise RuntimeError(
            f"rank 0's model has {int(meta[9])} float32 state values, this worker's "
            f"{n_floats}: every worker must build the same model and optimizer"
        )
    flat = np.concatenate([a.ravel() for a in floats]) if floats else np.zeros(0, np.float32)
    comm.broadcast(flat, root=0)
    rest = np.array([float(a.ravel()[0]) if a.size == 1 else 0.0 for a in others], np.float64)
    comm.broadcast(rest, root=0)
    if session.rank != 0:
        received: list[Any] = []
        offset, values = 0, iter(rest)
        for a in arrays:
            if a.dtype == np.float32:
                received.append(flat[offset : offset + a.size].reshape(a.shape))
                offset += a.size
            else:  # a scalar takes rank 0's value; anything larger stays as it is
                value = next(values)
                received.append(
                    np.asarray(value).astype(a.dtype).reshape(a.shape) if a.size == 1 else a
                )
        trainer.adapter.load_state(received)
        trainer.step = int(meta[0])
        trainer.batch_size = int(meta[1])
        trainer.set_lr(float(meta[2]))
        if trainer.sampler is not None:
            trainer.sampler.seek(int(meta[3]), int(meta[4]))
        trainer.agreement.applied_seq = int(meta[5])
        session.commands.discard(trainer.agreement.applied_seq)
        trainer.strategy = trainer.strategies[STRATEGIES[int(meta[6])]]
        trainer.topology = TOPOLOGIES[int(meta[7])]
        trainer.paused = bool(meta[8])
        # The noise estimate too: the adascale rule must give every worker the same lr.
        trainer.noise.load_state(list(meta[11:16]))
    if comm.algorithm != native_algorithm(trainer.topology):
        comm.set_algorithm(native_algorithm(trainer.topology))
