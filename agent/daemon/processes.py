"""One training worker process on this node: how it is started, recognised again by an
agent that restarted (its pid and start time), signalled, and how it ended.

A worker runs in a session of its own (``python -m agent.runtime.launcher <entrypoint>``,
started by name: the daemon never imports the runtime), so it outlives the agent and a
Ctrl-C meant for it; its stdout and stderr go to its log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import protocol
from agent.daemon import storage
from agent.protocol.process import process_alive, process_start_time

# What became of a worker process (LocalWorker.outcome).
FINISHED = "finished"  # a member that exited 0: training is over
LEFT = "left"  # removed from the cluster; exited 0
CRASHED = "crashed"  # died, reported to the control plane; the others go on
FAILED = "failed"  # died, and the job fails with it
TERMINATED = "terminated"  # killed by the agent (stop, shutdown, the job failed)

LAUNCHER = "agent.runtime.launcher"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


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
    process: subprocess.Popen[bytes] | None = (
        None  # None when re-attached: another agent started it
    )
    outcome: str = ""  # set when the process has exited (see the constants above)
    left_reported: bool = False
    exit_code: int | None = None  # from its "exit" line
    code: int | None = None  # how it ended, when known
    replied_seq: int = 0  # highest command seq it answered
    acked_n: int = 0  # its numbered lines handled (and acknowledged) so far
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

    def launch(
        self,
        *,
        job_id: int,
        state_dir: Path,
        python: str,
        entrypoint: str,
        grace_s: float,
        env: dict[str, str],
    ) -> None:
        """Start the worker process of job ``job_id`` with the agent's environment plus
        ``env`` (its place in the job)."""
        self.socket_path = str(storage.socket_path(state_dir, job_id, self.rank))
        self.log_path = str(storage.log_path(state_dir, job_id, self.rank))
        for path in (self.socket_path, self.log_path):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        environment = dict(os.environ)
        environment.update(
            {
                protocol.ENV_JOB: str(job_id),
                protocol.ENV_ADDRESS: self.address,
                protocol.ENV_AGENT_SOCKET: self.socket_path,
                protocol.ENV_AGENT_GRACE_S: str(grace_s),
                "PYTHONUNBUFFERED": "1",
                "TF_CPP_MIN_LOG_LEVEL": environment.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                **env,
            }
        )
        with open(self.log_path, "ab") as log_file:
            # Its own session: the worker outlives the agent (and a Ctrl-C meant for it).
            proc = subprocess.Popen(
                [python, "-m", LAUNCHER, entrypoint],
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.process, self.pid = proc, proc.pid
        self.start_time = process_start_time(proc.pid)

    def state(self) -> dict[str, Any]:
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
    def from_state(cls, d: dict[str, Any]) -> LocalWorker:
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
