"""A job's training workers on this node: spawn them, relay commands, collect output.

Each worker is a child process (``python -m <entrypoint>``) with the job described in
its environment. Its protocol lines (see :mod:`agent.protocol`) are parsed here; every
other line goes to the job's log file, whose tail explains a failure.
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


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class PendingCommand:
    id: int
    seq: int
    action: str
    steps: dict[int, int] = field(default_factory=dict)  # rank -> step applied at
    errors: dict[int, str] = field(default_factory=dict)


class WorkerGroup:
    """The workers of one job on this node."""

    def __init__(self, *, job_id: int, start: dict, python: str, address: str, log_dir: Path,
                 first_seq: int, on_metrics: Callable[[list[dict]], None],
                 on_command_done: Callable[[int, bool, int | None, str], Awaitable[None]]):
        self.job_id = job_id
        self.start = start
        self.python = python
        self.address = address
        self.first_seq = first_seq
        self.log_path = log_dir / f"job-{job_id}.log"
        self.on_metrics = on_metrics
        self.on_command_done = on_command_done
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.ports: dict[int, int] = {}
        self.pending: dict[int, PendingCommand] = {}
        self.stop_requested = False
        self.shutting_down = False
        self._tail: collections.deque[str] = collections.deque(maxlen=300)
        self._readers: list[asyncio.Task] = []

    @property
    def ranks(self) -> list[int]:
        return list(self.start["ranks"])

    def choose_ports(self) -> list[dict]:
        """Free ports on this node for the local ranks (reported to the control plane)."""
        self.ports = {r: free_port(self.address) for r in self.ranks}
        return [{"rank": r, "port": p} for r, p in self.ports.items()]

    async def spawn(self, members: list[str]) -> list[dict]:
        """Start the local ranks; ``members`` is the cluster spec: every rank's host:port."""
        if len(members) != int(self.start["world_size"]) or not all(members):
            raise ValueError(f"incomplete cluster spec {members!r}")
        peers = ",".join(members)
        params = {k: self.start[k] for k in ("hyperparameters", "batch_size", "lr", "strategy", "topology")}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", buffering=1)
        for rank in self.ranks:
            env = dict(os.environ)
            env.update({
                protocol.ENV_JOB: str(self.job_id), protocol.ENV_RANK: str(rank),
                protocol.ENV_PEERS: peers, protocol.ENV_PARAMS: json.dumps(params),
                protocol.ENV_FIRST_SEQ: str(self.first_seq),
                "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            })
            proc = await asyncio.create_subprocess_exec(
                self.python, "-m", self.start["entrypoint"], env=env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, limit=1 << 22,
            )
            self.processes[rank] = proc
            self._readers.append(asyncio.create_task(self._read(rank, proc.stdout, parse=True)))
            self._readers.append(asyncio.create_task(self._read(rank, proc.stderr, parse=False)))
        return [{"rank": r, "port": self.ports[r], "state": "running"} for r in self.ranks]

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
                    log.warning("job %s rank %s: malformed protocol line", self.job_id, rank)
                    continue
                await self._handle(rank, message)
            else:
                self._tail.append(f"[rank {rank}] {line}")
                self._log.write(f"[rank {rank}] {line}\n")

    async def _handle(self, rank: int, message: dict) -> None:
        kind = message.get("type")
        if kind == "metrics":
            points = message.get("points") or []
            for p in points:
                p["job"] = self.job_id
            self.on_metrics(points)
        elif kind in ("applied", "failed"):
            command = self.pending.get(message.get("id"))
            if command is None:
                return
            if kind == "applied":
                command.steps[rank] = int(message.get("step", -1))
            else:
                command.errors[rank] = str(message.get("error", "failed"))
            if len(command.steps) + len(command.errors) == len(self.ranks):
                del self.pending[command.id]
                steps = set(command.steps.values())
                if command.errors:
                    await self.on_command_done(command.id, False, None, "; ".join(
                        f"rank {r}: {e}" for r, e in sorted(command.errors.items())))
                elif len(steps) != 1:
                    await self.on_command_done(command.id, False, None,
                                               f"workers applied at different steps {sorted(steps)}")
                else:
                    await self.on_command_done(command.id, True, steps.pop(), "")

    async def send_command(self, frame: dict) -> None:
        """Forward a command to every worker of the job on this node."""
        if frame["action"] == "stop":
            self.stop_requested = True
        self.pending[frame["id"]] = PendingCommand(frame["id"], frame["seq"], frame["action"])
        line = (json.dumps({"type": "command", "id": frame["id"], "seq": frame["seq"],
                            "action": frame["action"], "payload": frame.get("payload") or {}}) + "\n").encode()
        for proc in self.processes.values():
            if proc.stdin is not None and proc.returncode is None:
                try:
                    proc.stdin.write(line)
                    await proc.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    pass

    async def wait(self) -> tuple[bool, str]:
        """Wait for the workers; on the first failure stop the rest. Returns (ok, reason)."""
        waiters = {asyncio.ensure_future(p.wait()): r for r, p in self.processes.items()}
        failure = ""
        while waiters:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                rank = waiters.pop(fut)
                code = fut.result()
                if code != 0 and not failure:
                    failure = f"worker rank {rank} exited with code {code}"
                    await self.terminate()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._log.close()
        if failure:
            tail = self._failure_excerpt()
            return False, f"{failure}; last output:\n{tail}" if tail else failure
        return True, ""

    def _failure_excerpt(self) -> str:
        """The first traceback of the failed run if there is one, else the last lines."""
        lines = list(self._tail)
        start = next((i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line), None)
        if start is None:
            return "\n".join(lines[-12:])
        end = next((j + 1 for j in range(start + 1, len(lines))
                    if lines[j].split("] ", 1)[-1][:1] not in (" ", "^", "") or j - start > 40), len(lines))
        return "\n".join(lines[start:end])

    async def terminate(self, grace_s: float = 5.0) -> None:
        for proc in self.processes.values():
            if proc.returncode is None:
                proc.terminate()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in self.processes.values())), grace_s)
        except asyncio.TimeoutError:
            for proc in self.processes.values():
                if proc.returncode is None:
                    proc.kill()


__all__ = ["WorkerGroup", "free_port"]
