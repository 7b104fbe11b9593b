"""A job's training workers on this node: spawn them, relay commands and membership
changes, collect what they say — and find them again after the agent restarted.

Workers are processes of their own sessions (:mod:`agent.daemon.processes`), each
listening on a Unix socket the agent connects to (:mod:`agent.daemon.connection`). What
it takes to take them over again — start parameters, cluster version and members, each
worker's pid, start time, address and socket, the commands in flight — is kept in
``jobs/job-<id>.json``, rewritten atomically on every change (:meth:`WorkerGroup.restore`,
:meth:`WorkerGroup.reattach`). Workers are keyed by their number in the job (the control
plane's ``Worker.rank``); a worker's rank in a cluster version is its address's index in
the version's members (docs/protocols.md, "Elastic membership").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent import protocol
from agent.daemon import connection, storage
from agent.daemon.bundles import JobCode
from agent.daemon.commands import CommandRelay, JobNotes, OnCommandDone, ends_joiners, terminates
from agent.daemon.gpu_pinning import GpuPool, pinned_env
from agent.daemon.logs import failure_excerpt
from agent.daemon.processes import (
    CRASHED,
    DEFAULT_LOG_LIMITS,
    FAILED,
    FINISHED,
    LEFT,
    TERMINATED,
    LocalWorker,
    LogLimits,
    free_port,
)
from agent.protocol import vocabulary as v
from agent.protocol.control import (
    AppliedFrame,
    CommandFrame,
    ExitedEvent,
    JoinPayload,
    StartPayload,
    WorkerEvent,
)
from agent.protocol.process import process_alive
from agent.protocol.rest import WorkerPort
from agent.protocol.worker import (
    AppliedLine,
    ClusterLine,
    DetachedLine,
    DroppedLine,
    ExitLine,
    FailedLine,
    FromWorker,
    LeftLine,
    MetricPoint,
    MetricsLine,
    PeerFailedLine,
    RescaledLine,
    StandbyLine,
    encode,
)

log = logging.getLogger(__name__)


def _secret_env(secret: str | None) -> dict[str, str]:
    """The run's fabric secret for a worker's environment (none from an older control
    plane: the worker's connections then carry no proof)."""
    return {protocol.ENV_FABRIC_SECRET: secret} if secret else {}


EXIT_POLL_S = 0.1
KEEPER_EXIT_WAIT_S = 3.0  # for a worker's log keeper to write what the worker wrote last

# The points of a metrics line, and where it came from: (job, worker number, line number).
OnMetrics = Callable[[list[MetricPoint], tuple[int, int, int] | None], None]
OnWorkerEvent = Callable[[int, WorkerEvent], Awaitable[None]]


class WorkerGroup:
    """The workers of one job on this node."""

    def __init__(
        self,
        *,
        job_id: int,
        start: StartPayload,
        python: str,
        address: str,
        state_dir: Path,
        first_seq: int,
        on_metrics: OnMetrics,
        on_command_done: OnCommandDone,
        on_worker_event: OnWorkerEvent | None = None,
        grace_s: float = 600.0,
        persist: bool = True,
        log_limits: LogLimits = DEFAULT_LOG_LIMITS,
        ignore_sigterm: bool = False,
        gpu_pool: GpuPool | None = None,
    ):
        self.job_id = job_id
        # AGENT_ON_EXIT=leave: workers ignore SIGTERM (a Slurm job's end signals every
        # process of the step); the agent shrinks them away first (see Agent.run).
        self.ignore_sigterm = ignore_sigterm
        self.start = start
        self.python = python
        self.address = address
        self.first_seq = first_seq
        self.state_dir = state_dir
        self.state_path = storage.job_state_path(state_dir, job_id) if persist else None
        self.grace_s = grace_s
        self.log_limits = log_limits
        self.on_metrics = on_metrics
        self.on_worker_event = on_worker_event
        # The node's GPUs, shared by every job's group: each worker claims one of its own.
        self.gpu_pool = gpu_pool if gpu_pool is not None else GpuPool(())
        self.workers: dict[int, LocalWorker] = {}
        self.ports: dict[int, int] = {}
        self.commands = CommandRelay(on_command_done, self.save)
        self.notes = JobNotes()
        # The latest cluster version this group knows, and the job's lower bound on size.
        self.version = 0
        self.members: list[str] = []
        self.workers_min = start.workers_min or start.world_size or 1
        self.dead: set[str] = set()  # members that died since the latest version
        self.stop_requested = False
        self.shutting_down = False
        self.failure = ""
        self.failed_rank: int | None = None
        self._connections: dict[int, asyncio.Task[None]] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._detaching = False
        self._changed = asyncio.Event()
        # Where a job with a code bundle runs (set by the agent before workers start).
        self.code: JobCode | None = None

    # -- state kept on disk -------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "job": self.job_id,
            "start": self.start.to_dict(),
            "first_seq": self.first_seq,
            "version": self.version,
            "members": self.members,
            "workers_min": self.workers_min,
            "dead": sorted(self.dead),
            "stop_requested": self.stop_requested,
            "failure": self.failure,
            "failed_rank": self.failed_rank,
            "ports": {str(r): p for r, p in self.ports.items()},
            "workers": [w.state() for w in self.workers.values()],
            **self.commands.state(),
            "meta": self.notes.state(),
        }

    def save(self) -> None:
        if self.state_path is not None:
            storage.write_json_atomically(self.state_path, self.state())

    def forget(self) -> None:
        """The job is over here: remove its state file and sockets (for good: a watcher
        finishing later must not write the file again)."""
        if self.state_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            self.state_path = None
        for worker in self.workers.values():
            self.gpu_pool.release(self.job_id, worker.rank)
            if worker.socket_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(worker.socket_path)

    @classmethod
    def restore(cls, state: dict[str, Any], **kwargs: Any) -> WorkerGroup:
        """The group as a previous agent left it (call :meth:`reattach` to take its workers on)."""
        group = cls(
            job_id=int(state["job"]),
            start=StartPayload.from_dict(state["start"]),
            first_seq=int(state["first_seq"]),
            **kwargs,
        )
        group.version, group.members = int(state["version"]), list(state["members"])
        group.workers_min = int(state["workers_min"])
        group.dead = set(state["dead"])
        group.stop_requested = bool(state["stop_requested"])
        group.failure, group.failed_rank = state.get("failure", ""), state.get("failed_rank")
        group.ports = {int(r): int(p) for r, p in state["ports"].items()}
        for d in state["workers"]:
            worker = LocalWorker.from_state(d)
            group.workers[worker.rank] = worker
            if worker.gpu and not worker.outcome and worker.pid is not None:
                # It still runs on that GPU (or its watcher will find it gone and free it).
                group.gpu_pool.hold(group.job_id, worker.rank, worker.gpu)
        group.commands.restore(state)
        group.notes = JobNotes.from_state(state.get("meta") or {})
        return group

    def reattach(self) -> list[int]:
        """Take over the workers a previous agent started: reconnect to those still alive
        (the same processes: pid and start time); the others died meanwhile and are
        handled as exits. Returns the numbers of those found alive."""
        found = []
        for worker in self.workers.values():
            if worker.outcome or worker.pid is None:
                continue
            if process_alive(worker.pid, worker.start_time):
                found.append(worker.rank)
            self._connections[worker.rank] = asyncio.create_task(connection.serve(worker, self))
            self._watchers.append(asyncio.create_task(self._watch(worker)))
        self._changed.set()
        return found

    @property
    def detaching(self) -> bool:
        return self._detaching

    async def detach(self, timeout_s: float = 5.0) -> None:
        """Let go of the workers without stopping them (the agent is exiting; a restarted
        agent re-attaches). Each connected worker is asked to let go and its connection
        read up to its last line (``detached``), so what it had written — metrics
        included — is handled here, not lost; then the connections close and the state
        stays on disk."""
        self._detaching = True
        for task in self._watchers:
            task.cancel()
        serving = [
            (w, self._connections[r]) for r, w in self.workers.items() if r in self._connections
        ]
        late = await connection.let_go(serving, timeout_s)
        if late:
            log.warning(
                "job %s: %d worker(s) did not let go within %.0f s; closing their connections",
                self.job_id,
                late,
                timeout_s,
            )
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self.save()

    # -- the processes ------------------------------------------------------------------
    @property
    def ranks(self) -> list[int]:
        """The initial workers placed on this node (from the start command)."""
        return list(self.start.ranks)

    def choose_ports(self, ranks: list[int] | None = None) -> list[WorkerPort]:
        """Ports on this node for ``ranks`` (default: the initial ones), reported to the
        control plane. Ports chosen before (by this agent or the one before a restart) are
        kept: the other nodes may already know them."""
        ranks = self.ranks if ranks is None else ranks
        for r in ranks:
            if r not in self.ports:
                self.ports[r] = free_port(self.address)
        self.save()
        return [WorkerPort(rank=r, port=self.ports[r]) for r in ranks]

    async def _launch(self, worker: LocalWorker, env: dict[str, str], entrypoint: str) -> None:
        code = self.code
        worker.gpu = self.gpu_pool.claim(self.job_id, worker.rank, worker.gpu)
        gpu_env = pinned_env(worker.gpu) if worker.gpu else {}
        try:
            worker.launch(
                job_id=self.job_id,
                state_dir=self.state_dir,
                python=self.python,
                entrypoint=entrypoint,
                grace_s=self.grace_s,
                env={**(code.environment() if code is not None else {}), **env, **gpu_env},
                log_limits=self.log_limits,
                cwd=None if code is None else code.cwd,
                ignore_sigterm=self.ignore_sigterm,
            )
        except BaseException:
            self.gpu_pool.release(self.job_id, worker.rank)
            raise
        self.workers[worker.rank] = worker
        self.save()
        self._connections[worker.rank] = asyncio.create_task(connection.serve(worker, self))
        self._watchers.append(asyncio.create_task(self._watch(worker)))
        self._changed.set()

    async def spawn(self, members: Sequence[str | None], version: int = 1) -> None:
        """Start the local initial ranks; ``members`` is cluster version ``version``: in
        version 1 every initial rank's host:port, in rank order. A later version (written
        while this node was still waiting for the others to register: a member elsewhere
        died, and the job went on without it) lists the survivors: each local rank starts
        at its place in that list (it must be there)."""
        if not all(members) or (version <= 1 and len(members) != self.start.world_size):
            raise ValueError(f"incomplete cluster spec {list(members)!r}")
        addresses = [str(m) for m in members]
        local = {
            rank: addresses[rank] if version <= 1 else f"{self.address}:{self.ports[rank]}"
            for rank in self.ranks
        }
        left_out = [rank for rank, address in local.items() if address not in addresses]
        if left_out:
            raise ValueError(
                f"cluster version {version} ({', '.join(addresses)}) leaves out worker(s) "
                f"{left_out} of this node, which had not started yet"
            )
        self.gpu_pool.check_room(self.job_id, [r for r in self.ranks if r not in self.workers])
        self.version, self.members = version, addresses
        params = json.dumps(self.start.params.to_dict())
        for rank in self.ranks:
            if rank in self.workers:
                continue  # started before the agent restarted
            worker = LocalWorker(rank=rank, port=self.ports[rank], address=local[rank])
            await self._launch(
                worker,
                {
                    protocol.ENV_RANK: str(addresses.index(local[rank])),
                    protocol.ENV_PEERS: ",".join(addresses),
                    protocol.ENV_PARAMS: params,
                    protocol.ENV_FIRST_SEQ: str(self.first_seq),
                    protocol.ENV_CLUSTER_VERSION: str(version),
                    **_secret_env(self.start.fabric_secret),
                },
                self.start.entrypoint,
            )

    async def add_joiners(self, join: JoinPayload, *, seq: int) -> list[int]:
        """Start warm standbys (``ADAPTRAIN_JOINING=1``) for a grow, to join after version
        ``join.cluster_version``. Commands up to ``seq`` (the scale_workers command) came
        before them; rank 0 hands them its state. Returns the numbers of those started."""
        if join.cluster_version > self.version:
            self.version, self.members = join.cluster_version, list(join.members)
        self.workers_min = join.workers_min
        self.gpu_pool.check_room(
            self.job_id, [s.rank for s in join.workers if s.rank not in self.workers]
        )
        params = json.dumps(join.params.to_dict())
        started = []
        for spec in join.workers:
            if spec.rank in self.workers:
                continue  # a redelivered command
            port = self.ports.get(spec.rank) or free_port(self.address)
            self.ports[spec.rank] = port
            worker = LocalWorker(
                rank=spec.rank, port=port, address=f"{self.address}:{port}", joining=True
            )
            await self._launch(
                worker,
                {
                    protocol.ENV_JOINING: "1",
                    protocol.ENV_RANK: str(spec.cluster_rank),
                    protocol.ENV_PEERS: ",".join(join.members),
                    protocol.ENV_PARAMS: params,
                    protocol.ENV_FIRST_SEQ: str(seq),
                    protocol.ENV_CLUSTER_VERSION: str(join.cluster_version),
                    **_secret_env(join.fabric_secret),
                },
                join.entrypoint,
            )
            started.append(spec.rank)
        return started

    # -- what workers say ---------------------------------------------------------------
    def hello_lines(self, worker: LocalWorker) -> list[bytes]:
        """What a worker is sent on every (re)connection: the latest cluster version and,
        to a member, the commands not known to be answered by every member (it takes each
        once, and answers again those it applied)."""
        lines = []
        if self.version >= 1 and self.members:
            lines.append(self._cluster_line())
        if not worker.joining and worker.address in self.members:
            lines.extend(encode(c) for c in self.commands.missed(worker.replied_seq))
        return lines

    def _cluster_line(self) -> bytes:
        return encode(ClusterLine(version=self.version, members=tuple(self.members)))

    async def handle(self, worker: LocalWorker, line: FromWorker, n: int | None = None) -> None:
        match line:
            case MetricsLine(points=points):
                if points:
                    worker.last_step = max(worker.last_step or 0, *(p.step for p in points))
                source = (self.job_id, worker.rank, n) if n is not None else None
                self.on_metrics([replace(p, job=self.job_id) for p in points], source)
            case AppliedLine() | FailedLine():
                await self._reply(worker, line)
            case StandbyLine() | RescaledLine() | LeftLine() | PeerFailedLine():
                if isinstance(line, LeftLine):
                    worker.left_reported = True
                    self.save()
                await self._emit(worker.rank, line)
            case ExitLine(code=code):
                worker.exit_code = code
            case DroppedLine(metrics=count):
                log.warning(
                    "job %s worker %s: dropped %s metric message(s) while no agent was connected",
                    self.job_id,
                    worker.rank,
                    count,
                )
            case DetachedLine():
                pass  # the connection ends there (connection.serve)

    async def _emit(self, rank: int, event: WorkerEvent) -> None:
        if self.on_worker_event is not None:
            await self.on_worker_event(rank, event)

    async def _reply(self, worker: LocalWorker, line: AppliedLine | FailedLine) -> None:
        if line.seq > worker.replied_seq:
            worker.replied_seq = line.seq
            # Forget the lines every member here answered.
            members = [
                w
                for w in self.workers.values()
                if w.alive and not w.joining and w.address in self.members
            ]
            if members:
                self.commands.trim(min(w.replied_seq for w in members))
        await self.commands.reply(worker.rank, line)

    # -- commands -------------------------------------------------------------------------
    def _current_members(self) -> set[int]:
        """Local workers that are members of the latest version and alive."""
        members = set(self.members)
        return {r for r, w in self.workers.items() if w.alive and w.address in members}

    def record_command(self, frame: CommandFrame) -> None:
        """Take a command on before it is acknowledged: keep it (and, unless it is the
        inert scale_workers line, who must answer it) in the state on disk, so that an
        agent restarting after the ack still forwards it and reports it."""
        self.commands.seen.add(frame.id)
        only_joiners = ends_joiners(frame)
        if frame.action == v.STOP and not only_joiners:
            self.stop_requested = True
            if terminates(frame):
                self.notes.terminate = frame.id  # a restarted agent carries it out
        if not terminates(frame):
            inert = frame.action == v.SCALE_WORKERS or only_joiners
            self.commands.keep(frame, None if inert else self._current_members())
        self.save()

    async def send_command(self, frame: CommandFrame) -> None:
        """Forward a command (taken on with :meth:`record_command`) to the job's workers on
        this node; it is done once every worker that is a member of the current version
        replied (or is gone)."""
        if frame.id not in self.commands.seen:
            self.record_command(frame)
        line = encode(frame.for_worker())
        if ends_joiners(frame):
            # Standbys the control plane gave up on (the grow timed out): end those listed
            # for this node. The members train on; the line only keeps their command
            # sequence gap-free (the runtime does nothing else with it).
            listed = set(frame.stop_payload().joiners or ())
            for rank, worker in self.workers.items():
                if rank in listed and worker.joining and worker.alive:
                    worker.abandoned = True
                    worker.signal(signal.SIGTERM)
            members = self._current_members()
            await connection.send([w for r, w in self.workers.items() if r in members], line)
            await self.commands.on_done(AppliedFrame(id=frame.id, step=None))
            return
        if frame.action == v.STOP:
            if terminates(frame):
                # The job failed; its workers may be waiting for a version that will not come.
                await self.terminate()
                await self.commands.on_done(AppliedFrame(id=frame.id, step=None))
                return
            for worker in self.workers.values():
                if worker.joining and worker.alive:
                    worker.signal(signal.SIGTERM)  # a standby holds no state worth a clean stop
        command = self.commands.pending.get(frame.id)
        expected = command.expected if command is not None else self._current_members()
        await connection.send([w for r, w in self.workers.items() if r in expected], line)
        if command is not None and not command.expected:
            await self.commands.settle(command)

    async def resume_commands(self) -> None:
        """After a restart: commands whose every expected worker is gone are done now."""
        await self.commands.resume({r for r, w in self.workers.items() if w.alive})

    # -- membership -----------------------------------------------------------------------
    async def apply_cluster(
        self, version: int, members: list[str], *, workers_min: int | None = None
    ) -> bool:
        """A new cluster version: forward it to every worker (members switch to it, the
        others leave, standbys listed in it join). Returns False for an old version."""
        if version <= self.version:
            return False
        self.version, self.members = version, list(members)
        self.dead.clear()
        if workers_min is not None:
            self.workers_min = workers_min
        member_set = set(members)
        for worker in self.workers.values():
            if worker.joining and worker.address in member_set:
                worker.joining = False
        self.save()
        await connection.send(list(self.workers.values()), self._cluster_line())
        await self.commands.members_changed(self._current_members())
        return True

    def _can_continue_without(self, worker: LocalWorker) -> bool:
        """Whether the job can go on without this dead member: at least workers_min members
        would remain (so a job with min = max never can). The control plane decides; this
        only says whether to leave the others running until it has."""
        if self.version < 1 or worker.address not in self.members:
            return False
        remaining = [m for m in self.members if m != worker.address and m not in self.dead]
        return bool(remaining) and len(remaining) >= self.workers_min

    def _describe_exit(self, worker: LocalWorker, code: int | None) -> str:
        if code is not None:
            return f"worker rank {worker.rank} exited with code {code}"
        return (
            f"worker rank {worker.rank} is gone (exit status unknown: it ended while no agent "
            f"was its parent, without reporting one)"
        )

    async def _watch(self, worker: LocalWorker) -> None:
        while not worker.gone():
            await asyncio.sleep(EXIT_POLL_S)
        # Let the connection take what the worker wrote last (final replies, its exit status).
        serving = self._connections.get(worker.rank)
        if serving is not None:
            try:
                await asyncio.wait_for(asyncio.shield(serving), 3.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                serving.cancel()
        # And its log keeper write what it printed last (the traceback the excerpt quotes).
        deadline = asyncio.get_running_loop().time() + KEEPER_EXIT_WAIT_S
        while not worker.keeper_gone() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(EXIT_POLL_S / 4)
        code = worker.process.returncode if worker.process is not None else worker.exit_code
        worker.code = code
        member = worker.address in self.members and not worker.joining
        exited = ExitedEvent(code=code, error=self.failure_excerpt(worker.rank))
        if worker.abandoned:
            worker.outcome = TERMINATED  # the control plane already counts it failed
        elif self.stop_requested or self.shutting_down or self.failure:
            worker.outcome = TERMINATED if code != 0 else (FINISHED if member else LEFT)
        elif code == 0:
            worker.outcome = FINISHED if member else LEFT
            if worker.outcome == LEFT and not worker.left_reported:
                await self._emit(worker.rank, LeftLine(version=self.version))
        elif worker.joining or not member:
            worker.outcome = CRASHED  # a standby, or a worker that died on its way out
            await self._emit(worker.rank, exited)
        elif self._can_continue_without(worker):
            worker.outcome = CRASHED
            self.dead.add(worker.address)
            log.warning(
                "job %s: %s; the job is elastic, the others go on",
                self.job_id,
                self._describe_exit(worker, code),
            )
            await self._emit(worker.rank, exited)
        else:
            worker.outcome = FAILED
            self.failure = self._describe_exit(worker, code)
            self.failed_rank = worker.rank
            self.save()
            await self.terminate()
        self.gpu_pool.release(self.job_id, worker.rank)  # free for the next worker
        await self.commands.worker_gone(worker.rank)
        self.save()
        self._changed.set()

    async def wait(self) -> tuple[bool, str]:
        """Wait until every worker has exited (joiners may be added meanwhile); on a fatal
        failure stop the rest. Returns (ok, reason)."""
        while True:
            self._changed.clear()
            if self.workers and not any(w.alive for w in self.workers.values()):
                break
            await self._changed.wait()
        await asyncio.gather(*self._watchers, *self._connections.values(), return_exceptions=True)
        if self.failure:
            tail = self.failure_excerpt(self.failed_rank) if self.failed_rank is not None else ""
            return False, f"{self.failure}; last output:\n{tail}" if tail else self.failure
        return True, ""

    @property
    def finished_training(self) -> bool:
        """Whether a member of the job finished training here (vs. all left or crashed)."""
        return any(w.outcome == FINISHED for w in self.workers.values())

    def failure_excerpt(self, rank: int | None = None) -> str:
        """The first traceback of the failed run if there is one, else the last lines
        (from the worker's log file; every worker's when ``rank`` is None)."""
        ranks = sorted(self.workers) if rank is None else [rank]
        return failure_excerpt((r, self.workers[r].log_path) for r in ranks if r in self.workers)

    async def terminate(self, grace_s: float = 5.0) -> None:
        workers = [w for w in self.workers.values() if w.pid is not None and not w.gone()]
        for worker in workers:
            worker.signal(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + grace_s
        while any(not w.gone() for w in workers) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(EXIT_POLL_S)
        for worker in workers:
            if not worker.gone():
                worker.signal(signal.SIGKILL)
