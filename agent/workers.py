"""A job's training workers on this node: spawn them, relay commands and membership
changes, collect output.

Each worker is a child process (``python -m <entrypoint>``) with the job described in
its environment. Its protocol lines (see :mod:`agent.protocol`) are parsed here; every
other line goes to the job's log file, whose tail explains a failure.

Workers are keyed by their number in the job (the control plane's ``Worker.rank``):
the initial workers are 0..n-1, joiners are numbered on. A worker's rank in a cluster
version is its address's index in that version's members. Membership changes at run
time: joiners are added as warm standbys (:meth:`WorkerGroup.add_joiners`), ``cluster``
messages are forwarded to every worker (:meth:`WorkerGroup.apply_cluster`), and workers
that leave, or die while the job can go on without them, do not end the group.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent import protocol

log = logging.getLogger(__name__)

# What became of a worker process (LocalWorker.outcome).
FINISHED = "finished"      # a member that exited 0: training is over
LEFT = "left"              # removed from the cluster; exited 0
CRASHED = "crashed"        # died, reported to the control plane; the others go on
FAILED = "failed"          # died, and the job fails with it
TERMINATED = "terminated"  # killed by the agent (stop, shutdown, the job failed)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class PendingCommand:
    id: int
    seq: int
    action: str
    expected: set[int] = field(default_factory=set)  # workers that must reply
    steps: dict[int, int] = field(default_factory=dict)  # worker -> step applied at
    lrs: dict[int, float] = field(default_factory=dict)  # worker -> learning rate after applying
    errors: dict[int, str] = field(default_factory=dict)


@dataclass
class LocalWorker:
    rank: int                # the worker's number in the job
    port: int
    address: str             # host:port it listens on
    joining: bool = False    # a warm standby not yet in a cluster version
    process: asyncio.subprocess.Process | None = None
    outcome: str = ""        # set when the process has exited (see the constants above)
    left_reported: bool = False

    @property
    def alive(self) -> bool:
        return self.process is not None and not self.outcome


WorkerEvent = Callable[[int, str, dict], Awaitable[None]]


class WorkerGroup:
    """The workers of one job on this node."""

    def __init__(self, *, job_id: int, start: dict, python: str, address: str, log_dir: Path,
                 first_seq: int, on_metrics: Callable[[list[dict]], None],
                 on_command_done: Callable[[int, bool, int | None, str], Awaitable[None]],
                 on_worker_event: WorkerEvent | None = None):
        self.job_id = job_id
        self.start = start
        self.python = python
        self.address = address
        self.first_seq = first_seq
        self.log_path = log_dir / f"job-{job_id}.log"
        self.on_metrics = on_metrics
        self.on_command_done = on_command_done
        self.on_worker_event = on_worker_event
        self.workers: dict[int, LocalWorker] = {}
        self.ports: dict[int, int] = {}
        self.pending: dict[int, PendingCommand] = {}
        # The latest cluster version this group knows, and the job's lower bound on size.
        self.version = 0
        self.members: list[str] = []
        self.workers_min = int(start.get("workers_min") or start.get("world_size") or 1)
        self.dead: set[str] = set()  # members that died since the latest version
        self.stop_requested = False
        self.shutting_down = False
        self.failure = ""
        self._tail: collections.deque[str] = collections.deque(maxlen=300)
        self._readers: list[asyncio.Task] = []
        self._watchers: list[asyncio.Task] = []
        self._log = None
        self._changed = asyncio.Event()

    # -- the processes ------------------------------------------------------------------
    @property
    def ranks(self) -> list[int]:
        """The initial workers placed on this node (from the start command)."""
        return list(self.start.get("ranks") or [])

    @property
    def processes(self) -> dict[int, asyncio.subprocess.Process]:
        return {r: w.process for r, w in self.workers.items() if w.process is not None}

    def choose_ports(self, ranks: list[int] | None = None) -> list[dict]:
        """Free ports on this node for ``ranks`` (default: the initial ones), reported to
        the control plane."""
        chosen = {r: free_port(self.address) for r in (self.ranks if ranks is None else ranks)}
        self.ports.update(chosen)
        return [{"rank": r, "port": p} for r, p in chosen.items()]

    def _params(self, source: dict) -> dict:
        return {k: source[k] for k in ("hyperparameters", "batch_size", "lr", "strategy", "topology")}

    def _open_log(self) -> None:
        if self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a", buffering=1)

    async def _launch(self, worker: LocalWorker, env_extra: dict[str, str], entrypoint: str) -> None:
        env = dict(os.environ)
        env.update({
            protocol.ENV_JOB: str(self.job_id), protocol.ENV_ADDRESS: worker.address,
            "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            **env_extra,
        })
        proc = await asyncio.create_subprocess_exec(
            self.python, "-m", entrypoint, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=1 << 22,
        )
        worker.process = proc
        self.workers[worker.rank] = worker
        self._readers.append(asyncio.create_task(self._read(worker.rank, proc.stdout, parse=True)))
        self._readers.append(asyncio.create_task(self._read(worker.rank, proc.stderr, parse=False)))
        self._watchers.append(asyncio.create_task(self._watch(worker)))
        self._changed.set()

    async def spawn(self, members: list[str], version: int = 1) -> list[dict]:
        """Start the local initial ranks; ``members`` is cluster version ``version``: every
        rank's host:port."""
        if len(members) != int(self.start["world_size"]) or not all(members):
            raise ValueError(f"incomplete cluster spec {members!r}")
        self.version, self.members = version, list(members)
        peers = ",".join(members)
        params = json.dumps(self._params(self.start))
        self._open_log()
        for rank in self.ranks:
            worker = LocalWorker(rank=rank, port=self.ports[rank], address=members[rank])
            await self._launch(worker, {
                protocol.ENV_RANK: str(rank), protocol.ENV_PEERS: peers, protocol.ENV_PARAMS: params,
                protocol.ENV_FIRST_SEQ: str(self.first_seq), protocol.ENV_CLUSTER_VERSION: str(version),
            }, self.start["entrypoint"])
        return [{"rank": r, "port": self.ports[r], "state": "running"} for r in self.ranks]

    async def add_joiners(self, join: dict, *, seq: int) -> list[int]:
        """Start warm standbys (``ADAPTRAIN_JOINING=1``) for a grow: ``join`` carries the job's
        parameters, the version they will join after (``cluster_version``, ``members``) and
        their ``workers`` (``rank``, ``cluster_rank``). Commands up to ``seq`` (the
        scale_workers command) came before them; rank 0 hands them its state."""
        if join.get("cluster_version", 0) > self.version:
            self.version, self.members = int(join["cluster_version"]), list(join["members"])
        self.workers_min = int(join.get("workers_min", self.workers_min))
        params = json.dumps(self._params(join))
        self._open_log()
        started = []
        for spec in join["workers"]:
            rank = int(spec["rank"])
            if rank in self.workers:
                continue  # a redelivered command
            port = self.ports.get(rank) or free_port(self.address)
            self.ports[rank] = port
            worker = LocalWorker(rank=rank, port=port, address=f"{self.address}:{port}", joining=True)
            await self._launch(worker, {
                protocol.ENV_JOINING: "1", protocol.ENV_RANK: str(spec.get("cluster_rank", rank)),
                protocol.ENV_PEERS: ",".join(join["members"]), protocol.ENV_PARAMS: params,
                protocol.ENV_FIRST_SEQ: str(seq), protocol.ENV_CLUSTER_VERSION: str(join["cluster_version"]),
            }, join["entrypoint"])
            started.append(rank)
        return started

    # -- output -------------------------------------------------------------------------
    async def _read(self, rank: int, stream: asyncio.StreamReader, *, parse: bool) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\n")
            if parse and line.startswith(protocol.PREFIX):
                try:
                    message = json.loads(line[len(protocol.PREFIX):])
                except json.JSONDecodeError:
                    log.warning("job %s worker %s: malformed protocol line", self.job_id, rank)
                    continue
                await self._handle(rank, message)
            else:
                self._tail.append(f"[rank {rank}] {line}")
                if self._log is not None:
                    self._log.write(f"[rank {rank}] {line}\n")

    async def _emit(self, rank: int, event: str, data: dict) -> None:
        if self.on_worker_event is not None:
            await self.on_worker_event(rank, event, data)

    async def _handle(self, rank: int, message: dict) -> None:
        kind = message.get("type")
        if kind == "metrics":
            points = message.get("points") or []
            for p in points:
                p["job"] = self.job_id
            self.on_metrics(points)
        elif kind in ("applied", "failed"):
            command = self.pending.get(message.get("id"))
            if command is None or rank not in command.expected:
                return  # not ours to count (e.g. the inert scale_workers line)
            if kind == "applied":
                command.steps[rank] = int(message.get("step", -1))
                if isinstance(message.get("lr"), (int, float)):
                    command.lrs[rank] = float(message["lr"])
            else:
                command.errors[rank] = str(message.get("error", "failed"))
            await self._command_maybe_done(command)
        elif kind in ("standby", "rescaled", "left", "peer_failed"):
            worker = self.workers.get(rank)
            data = {k: v for k, v in message.items() if k != "type"}
            if "rank" in data:  # its rank in the version; "rank" names the worker's number upstream
                data["cluster_rank"] = data.pop("rank")
            if kind == "left" and worker is not None:
                worker.left_reported = True
            await self._emit(rank, kind, data)

    # -- commands -------------------------------------------------------------------------
    def _current_members(self) -> set[int]:
        """Local workers that are members of the latest version and alive."""
        members = set(self.members)
        return {r for r, w in self.workers.items() if w.alive and w.address in members}

    async def _command_maybe_done(self, command: PendingCommand) -> None:
        if command.id not in self.pending:
            return
        if not command.expected.issubset(set(command.steps) | set(command.errors)):
            return
        del self.pending[command.id]
        steps = set(command.steps.values())
        if command.errors:
            await self.on_command_done(command.id, False, None, "; ".join(
                f"worker {r}: {e}" for r, e in sorted(command.errors.items())))
        elif len(steps) > 1:
            await self.on_command_done(command.id, False, None,
                                       f"workers applied at different steps {sorted(steps)}")
        elif not steps:
            await self.on_command_done(command.id, False, None,
                                       "this node's workers of the job left before applying it")
        else:
            lrs = set(command.lrs.values())
            await self.on_command_done(command.id, True, steps.pop(), "",
                                       lr=lrs.pop() if len(lrs) == 1 else None)

    async def _write(self, workers, line: bytes) -> None:
        for worker in workers:
            proc = worker.process
            if proc is not None and proc.stdin is not None and proc.returncode is None:
                try:
                    proc.stdin.write(line)
                    await proc.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    pass

    async def send_command(self, frame: dict) -> None:
        """Forward a command to the job's workers on this node; it is done once every
        worker that is a member of the current version replied (or is gone)."""
        if frame["action"] == "stop":
            self.stop_requested = True
            if (frame.get("payload") or {}).get("terminate"):
                # The job failed; its workers may be waiting for a version that will not come.
                await self.terminate()
                await self.on_command_done(frame["id"], True, None, "")
                return
            for worker in self.workers.values():
                if worker.joining and worker.alive:
                    worker.process.terminate()  # a standby holds no state worth a clean stop
        expected = self._current_members()
        line = (json.dumps({"type": "command", "id": frame["id"], "seq": frame["seq"],
                            "action": frame["action"], "payload": frame.get("payload") or {}}) + "\n").encode()
        if frame["action"] == "scale_workers":
            # The control plane carries out scale_workers; the line only keeps the workers'
            # command sequence without gaps (they agree on commands by it). Replies are ignored.
            await self._write([w for r, w in self.workers.items() if r in expected], line)
            return
        command = PendingCommand(frame["id"], frame["seq"], frame["action"], expected=expected)
        self.pending[frame["id"]] = command
        await self._write([w for r, w in self.workers.items() if r in expected], line)
        if not expected:
            await self._command_maybe_done(command)

    # -- membership -----------------------------------------------------------------------
    async def apply_cluster(self, version: int, members: list[str], *, workers_min: int | None = None) -> bool:
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
        line = (json.dumps({"type": "cluster", "version": version, "members": list(members)}) + "\n").encode()
        await self._write(list(self.workers.values()), line)
        # Workers that are no longer members owe no reply to commands in flight.
        for command in list(self.pending.values()):
            command.expected &= self._current_members() | set(command.steps) | set(command.errors)
            await self._command_maybe_done(command)
        return True

    def _can_continue_without(self, worker: LocalWorker) -> bool:
        """Whether the job can go on without this dead member: at least workers_min members
        would remain (so a job with min = max never can). The control plane decides; this
        only says whether to leave the others running until it has."""
        if self.version < 1 or worker.address not in self.members:
            return False
        remaining = [m for m in self.members if m != worker.address and m not in self.dead]
        return bool(remaining) and len(remaining) >= self.workers_min

    async def _watch(self, worker: LocalWorker) -> None:
        code = await worker.process.wait()
        member = worker.address in self.members and not worker.joining
        if self.stop_requested or self.shutting_down or self.failure:
            worker.outcome = TERMINATED if code != 0 else (FINISHED if member else LEFT)
        elif code == 0:
            worker.outcome = FINISHED if member else LEFT
            if worker.outcome == LEFT and not worker.left_reported:
                await self._emit(worker.rank, "left", {"version": self.version})
        elif worker.joining:
            worker.outcome = CRASHED
            await self._emit(worker.rank, "exited", {"code": code, "error": self.failure_excerpt(worker.rank)})
        elif not member:
            worker.outcome = CRASHED  # it died on its way out
            await self._emit(worker.rank, "exited", {"code": code, "error": self.failure_excerpt(worker.rank)})
        elif self._can_continue_without(worker):
            worker.outcome = CRASHED
            self.dead.add(worker.address)
            log.warning("job %s: worker %s exited with code %s; the job is elastic, the others go on",
                        self.job_id, worker.rank, code)
            await self._emit(worker.rank, "exited", {"code": code, "error": self.failure_excerpt(worker.rank)})
        else:
            worker.outcome = FAILED
            self.failure = f"worker rank {worker.rank} exited with code {code}"
            await self.terminate()
        for command in list(self.pending.values()):
            command.expected.discard(worker.rank)
            await self._command_maybe_done(command)
        self._changed.set()

    async def wait(self) -> tuple[bool, str]:
        """Wait until every worker has exited (joiners may be added meanwhile); on a fatal
        failure stop the rest. Returns (ok, reason)."""
        while True:
            self._changed.clear()
            if self.workers and not any(w.alive for w in self.workers.values()):
                break
            await self._changed.wait()
        await asyncio.gather(*self._watchers, *self._readers, return_exceptions=True)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.failure:
            tail = self.failure_excerpt()
            return False, f"{self.failure}; last output:\n{tail}" if tail else self.failure
        return True, ""

    @property
    def finished_training(self) -> bool:
        """Whether a member of the job finished training here (vs. all left or crashed)."""
        return any(w.outcome == FINISHED for w in self.workers.values())

    def failure_excerpt(self, rank: int | None = None) -> str:
        """The first traceback of the failed run if there is one, else the last lines."""
        lines = list(self._tail)
        if rank is not None:
            lines = [line for line in lines if line.startswith(f"[rank {rank}] ")]
        start = next((i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line), None)
        if start is None:
            return "\n".join(lines[-12:])
        end = next((j + 1 for j in range(start + 1, len(lines))
                    if lines[j].split("] ", 1)[-1][:1] not in (" ", "^", "") or j - start > 40), len(lines))
        return "\n".join(lines[start:end])

    async def terminate(self, grace_s: float = 5.0) -> None:
        procs = [p for p in self.processes.values()]
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), grace_s)
        except asyncio.TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()


__all__ = ["WorkerGroup", "free_port"]
