"""A job's training workers on this node: spawn them, relay commands and membership
changes, collect output — and find them again after the agent restarted.

Each worker is a process of its own session (``python -m agent.runtime.launcher <entrypoint>``,
so it outlives the agent) with the job described in its environment. It listens on a
Unix socket under the agent's state directory (:mod:`agent.runtime.channel`); the agent connects
to it, and reconnects whenever the connection drops while the worker lives. Protocol
messages (see :mod:`agent.protocol`) travel over that socket; the worker's stdout and
stderr go straight to its log file (``logs/job-<id>.rank-<n>.log``), whose tail explains
a failure.

Everything needed to take the workers over again is kept in ``jobs/job-<id>.json``
(rewritten atomically whenever it changes): the start parameters, the cluster version
and members, each worker's number, pid and start time, address, port and socket, the
commands forwarded and not yet answered, and the ids of commands already taken. A
restarted agent rebuilds the group from it (:meth:`WorkerGroup.restore`), checks which
pids still are the processes it started, reconnects to them, and sends them the latest
cluster version and the commands they have not answered; the workers take each command
once and answer again the ones they already applied.

An agent that restarted is not the parent of the workers it found: it learns that one
exited from the end of its connection plus its pid being gone, and its exit status from
the worker's last message (``exit``); a worker that died without one (killed) is
handled like a crash.

Workers are keyed by their number in the job (the control plane's ``Worker.rank``):
the initial workers are 0..n-1, joiners are numbered on. A worker's rank in a cluster
version is its address's index in that version's members. Membership changes at run
time: joiners are added as warm standbys (:meth:`WorkerGroup.add_joiners`), ``cluster``
messages are forwarded to every worker (:meth:`WorkerGroup.apply_cluster`), and workers
that leave, or die while the job can go on without them, do not end the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent import protocol
from agent.protocol.process import process_alive, process_start_time, unix_path

log = logging.getLogger(__name__)

# What became of a worker process (LocalWorker.outcome).
FINISHED = "finished"  # a member that exited 0: training is over
LEFT = "left"  # removed from the cluster; exited 0
CRASHED = "crashed"  # died, reported to the control plane; the others go on
FAILED = "failed"  # died, and the job fails with it
TERMINATED = "terminated"  # killed by the agent (stop, shutdown, the job failed)

MAX_KEPT_COMMANDS = 1000  # forwarded commands kept to send again to workers that reconnect
EXIT_POLL_S = 0.1


def _ends_joiners(frame: dict) -> bool:
    """A ``stop`` that ends only the standbys it lists (services.joiners_expire)."""
    return frame.get("action") == "stop" and isinstance(
        (frame.get("payload") or {}).get("joiners"), list
    )


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_json_atomically(path: Path, data) -> None:
    """Replace ``path`` with ``data``: a crash leaves the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class PendingCommand:
    id: int
    seq: int
    action: str
    expected: set[int] = field(default_factory=set)  # workers that must reply
    steps: dict[int, int] = field(default_factory=dict)  # worker -> step applied at
    lrs: dict[int, float] = field(default_factory=dict)  # worker -> learning rate after applying
    errors: dict[int, str] = field(default_factory=dict)

    def state(self) -> dict:
        return {
            "id": self.id,
            "seq": self.seq,
            "action": self.action,
            "expected": sorted(self.expected),
            "steps": self.steps,
            "lrs": self.lrs,
            "errors": self.errors,
        }

    @classmethod
    def from_state(cls, d: dict) -> PendingCommand:
        return cls(
            int(d["id"]),
            int(d["seq"]),
            d["action"],
            expected={int(r) for r in d["expected"]},
            steps={int(r): int(v) for r, v in d["steps"].items()},
            lrs={int(r): float(v) for r, v in d["lrs"].items()},
            errors={int(r): str(v) for r, v in d["errors"].items()},
        )


@dataclass
class LocalWorker:
    rank: int  # the worker's number in the job
    port: int
    address: str  # host:port it listens on
    joining: bool = False  # a warm standby not yet in a cluster version
    pid: int | None = None
    start_time: int | None = None  # /proc/<pid>/stat start time: tells a reused pid apart
    socket_path: str = ""
    log_path: str = ""
    process: subprocess.Popen | None = None  # None when re-attached: another agent started it
    outcome: str = ""  # set when the process has exited (see the constants above)
    left_reported: bool = False
    exit_code: int | None = None  # from its "exit" message
    code: int | None = None  # how it ended, when known
    replied_seq: int = 0  # highest command seq it answered
    acked_n: int = 0  # its numbered messages handled (and acknowledged) so far
    writer: asyncio.StreamWriter | None = None
    abandoned: bool = False  # a standby the control plane gave up on: ended, not a crash

    @property
    def alive(self) -> bool:
        return self.pid is not None and not self.outcome

    def gone(self) -> bool:
        """Whether the process has exited (reaping it when it is our child)."""
        if self.process is not None:
            return self.process.poll() is not None
        return self.pid is None or not process_alive(self.pid, self.start_time)

    def signal(self, sig: int) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(sig)
        elif self.pid is not None and process_alive(self.pid, self.start_time):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def state(self) -> dict:
        return {
            "rank": self.rank,
            "port": self.port,
            "address": self.address,
            "joining": self.joining,
            "pid": self.pid,
            "start_time": self.start_time,
            "socket": self.socket_path,
            "log": self.log_path,
            "outcome": self.outcome,
            "left_reported": self.left_reported,
            "code": self.code,
            "replied_seq": self.replied_seq,
            "acked_n": self.acked_n,
        }

    @classmethod
    def from_state(cls, d: dict) -> LocalWorker:
        return cls(
            rank=int(d["rank"]),
            port=int(d["port"]),
            address=d["address"],
            joining=bool(d["joining"]),
            pid=d.get("pid"),
            start_time=d.get("start_time"),
            socket_path=d.get("socket", ""),
            log_path=d.get("log", ""),
            outcome=d.get("outcome", ""),
            left_reported=bool(d.get("left_reported")),
            code=d.get("code"),
            replied_seq=int(d.get("replied_seq", 0)),
            acked_n=int(d.get("acked_n", 0)),
        )


WorkerEvent = Callable[[int, str, dict], Awaitable[None]]


class WorkerGroup:
    """The workers of one job on this node."""

    def __init__(
        self,
        *,
        job_id: int,
        start: dict,
        python: str,
        address: str,
        state_dir: Path,
        first_seq: int,
        on_metrics: Callable[[list[dict]], None],
        on_command_done: Callable[[int, bool, int | None, str], Awaitable[None]],
        on_worker_event: WorkerEvent | None = None,
        grace_s: float = 600.0,
        persist: bool = True,
    ):
        self.job_id = job_id
        self.start = start
        self.python = python
        self.address = address
        self.first_seq = first_seq
        self.state_dir = state_dir
        self.log_dir = state_dir / "logs"
        self.state_path = state_dir / "jobs" / f"job-{job_id}.json" if persist else None
        self.grace_s = grace_s
        self.on_metrics = on_metrics
        self.on_command_done = on_command_done
        self.on_worker_event = on_worker_event
        self.workers: dict[int, LocalWorker] = {}
        self.ports: dict[int, int] = {}
        self.pending: dict[int, PendingCommand] = {}
        self.commands: list[dict] = []  # forwarded command lines, to send again on reconnect
        self.seen: set[int] = set()  # ids of commands this group took
        self.meta: dict = {}  # the daemon's own notes (kept with the state)
        # The latest cluster version this group knows, and the job's lower bound on size.
        self.version = 0
        self.members: list[str] = []
        self.workers_min = int(start.get("workers_min") or start.get("world_size") or 1)
        self.dead: set[str] = set()  # members that died since the latest version
        self.stop_requested = False
        self.shutting_down = False
        self.failure = ""
        self.failed_rank: int | None = None
        self._connections: dict[int, asyncio.Task] = {}
        self._watchers: list[asyncio.Task] = []
        self._detaching = False
        self._changed = asyncio.Event()

    # -- state kept on disk -------------------------------------------------------------
    def state(self) -> dict:
        return {
            "job": self.job_id,
            "start": self.start,
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
            "pending": [c.state() for c in self.pending.values()],
            "commands": self.commands,
            "seen": sorted(self.seen),
            "meta": self.meta,
        }

    def save(self) -> None:
        if self.state_path is not None:
            write_json_atomically(self.state_path, self.state())

    def forget(self) -> None:
        """The job is over here: remove its state file and sockets (for good: a watcher
        finishing later must not write the file again)."""
        if self.state_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            self.state_path = None
        for worker in self.workers.values():
            if worker.socket_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(worker.socket_path)

    @classmethod
    def restore(cls, state: dict, **kwargs) -> WorkerGroup:
        """The group as a previous agent left it (call :meth:`reattach` to take its workers on)."""
        group = cls(
            job_id=int(state["job"]),
            start=state["start"],
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
        group.pending = {int(c["id"]): PendingCommand.from_state(c) for c in state["pending"]}
        group.commands = list(state["commands"])
        group.seen = {int(i) for i in state["seen"]}
        group.meta = dict(state.get("meta") or {})
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
            self._connections[worker.rank] = asyncio.create_task(self._serve(worker))
            self._watchers.append(asyncio.create_task(self._watch(worker)))
        self._changed.set()
        return found

    async def detach(self, timeout_s: float = 5.0) -> None:
        """Let go of the workers without stopping them (the agent is exiting; a restarted
        agent re-attaches). Each connected worker is asked to let go and its connection
        read up to its last line (``detached``), so what it had written — metrics
        included — is handled here, not lost; then the connections close and the state
        stays on disk."""
        self._detaching = True
        for task in self._watchers:
            task.cancel()
        letting_go = []
        for rank, worker in self.workers.items():
            task = self._connections.get(rank)
            if worker.writer is not None and task is not None and not task.done():
                with contextlib.suppress(OSError, RuntimeError):
                    worker.writer.write(b'{"type":"detach"}\n')
                letting_go.append(task)
        if letting_go:
            _, late = await asyncio.wait(letting_go, timeout=timeout_s)
            if late:
                log.warning(
                    "job %s: %d worker(s) did not let go within %.0f s; closing their connections",
                    self.job_id,
                    len(late),
                    timeout_s,
                )
        for task in self._connections.values():
            task.cancel()
        await asyncio.gather(*self._connections.values(), *self._watchers, return_exceptions=True)
        for worker in self.workers.values():
            if worker.writer is not None:
                worker.writer.close()
                worker.writer = None
        self.save()

    # -- the processes ------------------------------------------------------------------
    @property
    def ranks(self) -> list[int]:
        """The initial workers placed on this node (from the start command)."""
        return list(self.start.get("ranks") or [])

    def choose_ports(self, ranks: list[int] | None = None) -> list[dict]:
        """Ports on this node for ``ranks`` (default: the initial ones), reported to the
        control plane. Ports chosen before (by this agent or the one before a restart) are
        kept: the other nodes may already know them."""
        ranks = self.ranks if ranks is None else ranks
        for r in ranks:
            if r not in self.ports:
                self.ports[r] = free_port(self.address)
        self.save()
        return [{"rank": r, "port": self.ports[r]} for r in ranks]

    def _params(self, source: dict) -> dict:
        return {
            k: source[k] for k in ("hyperparameters", "batch_size", "lr", "strategy", "topology")
        }

    async def _launch(
        self, worker: LocalWorker, env_extra: dict[str, str], entrypoint: str
    ) -> None:
        run_dir = self.state_dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        worker.socket_path = str(run_dir / f"job-{self.job_id}-{worker.rank}.sock")
        worker.log_path = str(self.log_dir / f"job-{self.job_id}.rank-{worker.rank}.log")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.socket_path)
        env = dict(os.environ)
        env.update(
            {
                protocol.ENV_JOB: str(self.job_id),
                protocol.ENV_ADDRESS: worker.address,
                protocol.ENV_AGENT_SOCKET: worker.socket_path,
                protocol.ENV_AGENT_GRACE_S: str(self.grace_s),
                "PYTHONUNBUFFERED": "1",
                "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                **env_extra,
            }
        )
        with open(worker.log_path, "ab") as log_file:
            # Its own session: the worker outlives the agent (and a Ctrl-C meant for it).
            proc = subprocess.Popen(
                [self.python, "-m", "agent.runtime.launcher", entrypoint],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker.process, worker.pid = proc, proc.pid
        worker.start_time = process_start_time(proc.pid)
        self.workers[worker.rank] = worker
        self.save()
        self._connections[worker.rank] = asyncio.create_task(self._serve(worker))
        self._watchers.append(asyncio.create_task(self._watch(worker)))
        self._changed.set()

    async def spawn(self, members: list[str], version: int = 1) -> list[dict]:
        """Start the local initial ranks; ``members`` is cluster version ``version``: in
        version 1 every initial rank's host:port, in rank order. A later version (written
        while this node was still waiting for the others to register: a member elsewhere
        died, and the job went on without it) lists the survivors: each local rank starts
        at its place in that list (it must be there)."""
        if not all(members) or (version <= 1 and len(members) != int(self.start["world_size"])):
            raise ValueError(f"incomplete cluster spec {members!r}")
        addresses = {
            rank: members[rank] if version <= 1 else f"{self.address}:{self.ports[rank]}"
            for rank in self.ranks
        }
        left_out = [rank for rank, address in addresses.items() if address not in members]
        if left_out:
            raise ValueError(
                f"cluster version {version} ({', '.join(members)}) leaves out worker(s) "
                f"{left_out} of this node, which had not started yet"
            )
        self.version, self.members = version, list(members)
        peers = ",".join(members)
        params = json.dumps(self._params(self.start))
        for rank in self.ranks:
            if rank in self.workers:
                continue  # started before the agent restarted
            worker = LocalWorker(rank=rank, port=self.ports[rank], address=addresses[rank])
            await self._launch(
                worker,
                {
                    protocol.ENV_RANK: str(members.index(addresses[rank])),
                    protocol.ENV_PEERS: peers,
                    protocol.ENV_PARAMS: params,
                    protocol.ENV_FIRST_SEQ: str(self.first_seq),
                    protocol.ENV_CLUSTER_VERSION: str(version),
                },
                self.start["entrypoint"],
            )
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
        started = []
        for spec in join["workers"]:
            rank = int(spec["rank"])
            if rank in self.workers:
                continue  # a redelivered command
            port = self.ports.get(rank) or free_port(self.address)
            self.ports[rank] = port
            worker = LocalWorker(
                rank=rank, port=port, address=f"{self.address}:{port}", joining=True
            )
            await self._launch(
                worker,
                {
                    protocol.ENV_JOINING: "1",
                    protocol.ENV_RANK: str(spec.get("cluster_rank", rank)),
                    protocol.ENV_PEERS: ",".join(join["members"]),
                    protocol.ENV_PARAMS: params,
                    protocol.ENV_FIRST_SEQ: str(seq),
                    protocol.ENV_CLUSTER_VERSION: str(join["cluster_version"]),
                },
                join["entrypoint"],
            )
            started.append(rank)
        return started

    # -- the connection to each worker --------------------------------------------------
    def _hello_lines(self, worker: LocalWorker) -> list[bytes]:
        """What a worker is sent on every (re)connection: the latest cluster version and,
        to a member, the commands not known to be answered by every member (it takes each
        once, and answers again those it applied)."""
        lines = []
        if self.version >= 1 and self.members:
            lines.append(self._cluster_line())
        if not worker.joining and worker.address in self.members:
            lines.extend(
                (json.dumps(frame) + "\n").encode()
                for frame in self.commands
                if frame["seq"] > worker.replied_seq
            )
        return lines

    def _cluster_line(self) -> bytes:
        return (
            json.dumps({"type": "cluster", "version": self.version, "members": list(self.members)})
            + "\n"
        ).encode()

    async def _connect(
        self, worker: LocalWorker
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Connect to the worker's socket, retrying while it starts up; None once it is gone."""
        delay = 0.02
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with unix_path(worker.socket_path) as name:
                    sock.connect(name)
                return await asyncio.open_unix_connection(sock=sock, limit=1 << 22)
            except OSError:
                sock.close()
            if worker.gone():
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _serve(self, worker: LocalWorker) -> None:
        """Keep a connection to the worker while it lives: read its messages; on every
        (re)connection first send what it may have missed."""
        while worker.alive and not self._detaching:
            connected = await self._connect(worker)
            if connected is None:
                return
            reader, writer = connected
            for line in self._hello_lines(worker):
                writer.write(line)
            worker.writer = writer
            try:
                await writer.drain()
                while True:
                    raw = await reader.readline()
                    if not raw:
                        break
                    if not raw.endswith(b"\n"):
                        break  # cut off: the worker sends it again to the next connection
                    try:
                        message = json.loads(raw)
                    except json.JSONDecodeError:
                        log.warning(
                            "job %s worker %s: malformed protocol line", self.job_id, worker.rank
                        )
                        continue
                    if not isinstance(message, dict):
                        continue
                    if message.get("type") == "detached":
                        return  # the worker's last line to this agent (see detach)
                    n = message.get("n")
                    if isinstance(n, int) and n <= worker.acked_n:
                        continue  # written again after a reconnection; handled before
                    await self._handle(worker.rank, message)
                    if isinstance(n, int):
                        # Its effect is on disk (state, outbox) before the worker lets go of it.
                        worker.acked_n = n
                        self.save()
                        writer.write(b'{"type":"ack","n":%d}\n' % n)
            except (OSError, ValueError, asyncio.IncompleteReadError):
                pass
            finally:
                worker.writer = None
                writer.close()
            if worker.gone() or self._detaching:
                return
            await asyncio.sleep(0.1)

    # -- output -------------------------------------------------------------------------
    async def _emit(self, rank: int, event: str, data: dict) -> None:
        if self.on_worker_event is not None:
            await self.on_worker_event(rank, event, data)

    async def _handle(self, rank: int, message: dict) -> None:
        message.pop("n", None)
        kind = message.get("type")
        worker = self.workers.get(rank)
        if kind == "metrics":
            points = message.get("points") or []
            for p in points:
                p["job"] = self.job_id
            self.on_metrics(points)
        elif kind in ("applied", "failed"):
            if (
                worker is not None
                and isinstance(message.get("seq"), int)
                and message["seq"] > worker.replied_seq
            ):
                worker.replied_seq = message["seq"]
                self._trim_commands()
            command = self.pending.get(message.get("id"))
            if command is None or rank not in command.expected:
                return  # not ours to count (e.g. the inert scale_workers line, or answered again)
            if kind == "applied":
                command.steps[rank] = int(message.get("step", -1))
                if isinstance(message.get("lr"), (int, float)):
                    command.lrs[rank] = float(message["lr"])
            else:
                command.errors[rank] = str(message.get("error", "failed"))
            if not await self._command_maybe_done(command):
                self.save()
        elif kind in ("standby", "rescaled", "left", "peer_failed"):
            data = {k: v for k, v in message.items() if k != "type"}
            if "rank" in data:  # its rank in the version; "rank" names the worker's number upstream
                data["cluster_rank"] = data.pop("rank")
            if kind == "left" and worker is not None:
                worker.left_reported = True
                self.save()
            await self._emit(rank, kind, data)
        elif kind == "exit" and worker is not None:
            worker.exit_code = message.get("code") if isinstance(message.get("code"), int) else None
        elif kind == "dropped":
            log.warning(
                "job %s worker %s: dropped %s metric message(s) while no agent was connected",
                self.job_id,
                rank,
                message.get("metrics"),
            )

    def _trim_commands(self) -> None:
        """Forget forwarded commands every member here answered (and none waits on)."""
        members = [
            w
            for w in self.workers.values()
            if w.alive and not w.joining and w.address in self.members
        ]
        if not members:
            return
        answered = min(w.replied_seq for w in members)
        self.commands = [f for f in self.commands if f["seq"] > answered or f["id"] in self.pending]

    # -- commands -------------------------------------------------------------------------
    def _current_members(self) -> set[int]:
        """Local workers that are members of the latest version and alive."""
        members = set(self.members)
        return {r for r, w in self.workers.items() if w.alive and w.address in members}

    async def _command_maybe_done(self, command: PendingCommand) -> bool:
        """Report the command once every expected worker answered; True when it was."""
        if command.id not in self.pending:
            return False
        if not command.expected.issubset(set(command.steps) | set(command.errors)):
            return False
        del self.pending[command.id]
        steps = set(command.steps.values())
        if command.errors:
            await self.on_command_done(
                command.id,
                False,
                None,
                "; ".join(f"worker {r}: {e}" for r, e in sorted(command.errors.items())),
            )
        elif len(steps) > 1:
            await self.on_command_done(
                command.id, False, None, f"workers applied at different steps {sorted(steps)}"
            )
        elif not steps:
            await self.on_command_done(
                command.id, False, None, "this node's workers of the job left before applying it"
            )
        else:
            lrs = set(command.lrs.values())
            await self.on_command_done(
                command.id, True, steps.pop(), "", lr=lrs.pop() if len(lrs) == 1 else None
            )
        # The report is safe in the agent's outbox before the command leaves the state.
        self.save()
        return True

    async def _write(self, workers, line: bytes) -> None:
        """Send to the connected ones; a worker connecting later is sent what it missed
        (see :meth:`_hello_lines`)."""
        for worker in workers:
            writer = worker.writer
            if writer is not None and not writer.is_closing():
                try:
                    writer.write(line)
                    await writer.drain()
                except (OSError, ConnectionResetError):
                    pass

    def record_command(self, frame: dict) -> None:
        """Take a command on before it is acknowledged: keep it (and, unless it is the
        inert scale_workers line, who must answer it) in the state on disk, so that an
        agent restarting after the ack still forwards it and reports it."""
        self.seen.add(frame["id"])
        ends_joiners = _ends_joiners(frame)
        if frame["action"] == "stop" and not ends_joiners:
            self.stop_requested = True
            if (frame.get("payload") or {}).get("terminate"):
                self.meta["terminate"] = frame["id"]  # a restarted agent carries it out
        if frame["action"] != "stop" or not (frame.get("payload") or {}).get("terminate"):
            self.commands.append(
                {
                    "type": "command",
                    "id": frame["id"],
                    "seq": frame["seq"],
                    "action": frame["action"],
                    "payload": frame.get("payload") or {},
                }
            )
            del self.commands[:-MAX_KEPT_COMMANDS]
            if frame["action"] != "scale_workers" and not ends_joiners:
                self.pending[frame["id"]] = PendingCommand(
                    frame["id"], frame["seq"], frame["action"], expected=self._current_members()
                )
        self.save()

    async def send_command(self, frame: dict) -> None:
        """Forward a command (taken on with :meth:`record_command`) to the job's workers on
        this node; it is done once every worker that is a member of the current version
        replied (or is gone)."""
        if frame["id"] not in self.seen:
            self.record_command(frame)
        if _ends_joiners(frame):
            # Standbys the control plane gave up on (the grow timed out): end those listed
            # for this node. The members train on; the line only keeps their command
            # sequence gap-free (the runtime does nothing else with it).
            listed = {int(r) for r in frame["payload"]["joiners"]}
            for rank, worker in self.workers.items():
                if rank in listed and worker.joining and worker.alive:
                    worker.abandoned = True
                    worker.signal(signal.SIGTERM)
            line = (
                json.dumps(
                    {
                        "type": "command",
                        "id": frame["id"],
                        "seq": frame["seq"],
                        "action": frame["action"],
                        "payload": frame["payload"],
                    }
                )
                + "\n"
            ).encode()
            await self._write(
                [w for r, w in self.workers.items() if r in self._current_members()], line
            )
            await self.on_command_done(frame["id"], True, None, "")
            return
        if frame["action"] == "stop":
            if (frame.get("payload") or {}).get("terminate"):
                # The job failed; its workers may be waiting for a version that will not come.
                await self.terminate()
                await self.on_command_done(frame["id"], True, None, "")
                return
            for worker in self.workers.values():
                if worker.joining and worker.alive:
                    worker.signal(signal.SIGTERM)  # a standby holds no state worth a clean stop
        line = (
            json.dumps(
                {
                    "type": "command",
                    "id": frame["id"],
                    "seq": frame["seq"],
                    "action": frame["action"],
                    "payload": frame.get("payload") or {},
                }
            )
            + "\n"
        ).encode()
        command = self.pending.get(frame["id"])
        expected = command.expected if command is not None else self._current_members()
        await self._write([w for r, w in self.workers.items() if r in expected], line)
        if command is not None and not command.expected:
            await self._command_maybe_done(command)

    async def resume_commands(self) -> None:
        """After a restart: commands whose every expected worker is gone are done now."""
        for command in list(self.pending.values()):
            command.expected = (
                {r for r in command.expected if self.workers.get(r) and self.workers[r].alive}
                | set(command.steps)
                | set(command.errors)
            )
            await self._command_maybe_done(command)

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
        await self._write(list(self.workers.values()), self._cluster_line())
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
        connection = self._connections.get(worker.rank)
        if connection is not None:
            try:
                await asyncio.wait_for(asyncio.shield(connection), 3.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                connection.cancel()
        code = worker.process.returncode if worker.process is not None else worker.exit_code
        worker.code = code
        member = worker.address in self.members and not worker.joining
        exited = {"code": code, "error": self.failure_excerpt(worker.rank)}
        if worker.abandoned:
            worker.outcome = TERMINATED  # the control plane already counts it failed
        elif self.stop_requested or self.shutting_down or self.failure:
            worker.outcome = TERMINATED if code != 0 else (FINISHED if member else LEFT)
        elif code == 0:
            worker.outcome = FINISHED if member else LEFT
            if worker.outcome == LEFT and not worker.left_reported:
                await self._emit(worker.rank, "left", {"version": self.version})
        elif worker.joining:
            worker.outcome = CRASHED
            await self._emit(worker.rank, "exited", exited)
        elif not member:
            worker.outcome = CRASHED  # it died on its way out
            await self._emit(worker.rank, "exited", exited)
        elif self._can_continue_without(worker):
            worker.outcome = CRASHED
            self.dead.add(worker.address)
            log.warning(
                "job %s: %s; the job is elastic, the others go on",
                self.job_id,
                self._describe_exit(worker, code),
            )
            await self._emit(worker.rank, "exited", exited)
        else:
            worker.outcome = FAILED
            self.failure = self._describe_exit(worker, code)
            self.failed_rank = worker.rank
            self.save()
            await self.terminate()
        for command in list(self.pending.values()):
            command.expected.discard(worker.rank)
            await self._command_maybe_done(command)
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

    def _log_lines(self, rank: int, max_bytes: int = 64 * 1024) -> list[str]:
        worker = self.workers.get(rank)
        if worker is None or not worker.log_path:
            return []
        try:
            with open(worker.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                raw = f.read()
        except OSError:
            return []
        lines = raw.decode(errors="replace").splitlines()
        if size > max_bytes:
            lines = lines[1:]  # the first one is probably cut
        return [f"[rank {rank}] {line}" for line in lines[-300:]]

    def failure_excerpt(self, rank: int | None = None) -> str:
        """The first traceback of the failed run if there is one, else the last lines
        (from the worker's log file; every worker's when ``rank`` is None)."""
        if rank is not None:
            lines = self._log_lines(rank)
        else:
            lines = [line for r in sorted(self.workers) for line in self._log_lines(r)]
        start = next(
            (i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line), None
        )
        if start is None:
            return "\n".join(lines[-12:])
        end = next(
            (
                j + 1
                for j in range(start + 1, len(lines))
                if lines[j].split("] ", 1)[-1][:1] not in (" ", "^", "") or j - start > 40
            ),
            len(lines),
        )
        return "\n".join(lines[start:end])

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


__all__ = ["WorkerGroup", "free_port", "write_json_atomically"]
