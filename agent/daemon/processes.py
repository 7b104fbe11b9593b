"""One training worker process on this node: how it is started, recognised again by an
agent that restarted (its pid and start time), signalled, and how it ended.

A worker runs in a session of its own (``python -m agent.runtime.launcher <entrypoint>``,
started by name: the daemon never imports the runtime), so it outlives the agent and a
Ctrl-C meant for it. Its stdout and stderr are two pipes to its log keeper
(:mod:`agent.daemon.logkeeper`, a session of its own too), which writes both to the
worker's log file, line by line, each line marked with its stream and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import protocol
from agent.daemon import logs, storage
from agent.protocol.process import process_alive, process_start_time

# What became of a worker process (LocalWorker.outcome).
FINISHED = "finished"  # a member that exited 0: training is over
LEFT = "left"  # removed from the cluster; exited 0
CRASHED = "crashed"  # died, reported to the control plane; the others go on
FAILED = "failed"  # died, and the job fails with it
TERMINATED = "terminated"  # killed by the agent (stop, shutdown, the job failed)

LAUNCHER = "agent.runtime.launcher"
LOG_KEEPER = "agent.daemon.logkeeper"


@dataclass(frozen=True)
class LogLimits:
    """Bounds on a worker's log file (AGENT_LOG_FILE_MAX_BYTES, AGENT_LOG_MAX_LINE_BYTES)."""

    file_max_bytes: int = 16 << 20  # then it is rotated (one previous file is kept)
    line_max_bytes: int = 16 << 10  # a longer line is cut there


DEFAULT_LOG_LIMITS = LogLimits()


def _ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


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
    log_inode: int | None = None  # of the log file it started with (rotation renames it)
    keeper_pid: int | None = None  # its log keeper
    keeper_start_time: int | None = None
    process: subprocess.Popen[bytes] | None = (
        None  # None when re-attached: another agent started it
    )
    keeper: subprocess.Popen[bytes] | None = None
    outcome: str = ""  # set when the process has exited (see the constants above)
    left_reported: bool = False
    exit_code: int | None = None  # from its "exit" line
    code: int | None = None  # how it ended, when known
    replied_seq: int = 0  # highest command seq it answered
    acked_n: int = 0  # its numbered lines handled (and acknowledged) so far
    writer: asyncio.StreamWriter | None = None
    abandoned: bool = False  # a standby the control plane gave up on: ended, not a crash
    gpu: str | None = None  # UUID of the GPU it owns (agent.daemon.gpu_pinning)
    last_step: int | None = None  # the highest step of its metrics (for its GPU's series)

    @property
    def alive(self) -> bool:
        return self.pid is not None and not self.outcome

    def gone(self) -> bool:
        """Whether the process has exited (reaping it when it is our child)."""
        if self.process is not None:
            return self.process.poll() is not None
        return self.pid is None or not process_alive(self.pid, self.start_time)

    def keeper_gone(self) -> bool:
        """Whether its log keeper has exited: everything the worker wrote is in the file."""
        if self.keeper is not None:
            return self.keeper.poll() is not None
        return self.keeper_pid is None or not process_alive(self.keeper_pid, self.keeper_start_time)

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
        log_limits: LogLimits = DEFAULT_LOG_LIMITS,
        cwd: Path | None = None,
        ignore_sigterm: bool = False,
    ) -> None:
        """Start the worker process of job ``job_id`` with the agent's environment plus
        ``env`` (its place in the job), in ``cwd`` (default: the agent's), and its log
        keeper. With ``ignore_sigterm`` both start with SIGTERM ignored (a disposition
        that survives exec), so that only the agent ends them: a Slurm job's end signals
        every process of its step, and the agent first shrinks its workers away."""
        preexec = _ignore_sigterm if ignore_sigterm else None
        self.socket_path = str(storage.socket_path(state_dir, job_id, self.rank))
        self.log_path = str(storage.log_path(state_dir, job_id, self.rank))
        Path(self.socket_path).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self.log_inode = logs.start_file(Path(self.log_path))
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
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            # The keeper first: a worker that cannot start closes its pipe ends, and the
            # keeper, reading nothing more, ends too.
            keeper = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    LOG_KEEPER,
                    self.log_path,
                    f"--stdout-fd={out_read}",
                    f"--stderr-fd={err_read}",
                    f"--max-bytes={log_limits.file_max_bytes}",
                    f"--max-line={log_limits.line_max_bytes}",
                ],
                pass_fds=(out_read, err_read),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=preexec,
            )
            self.keeper, self.keeper_pid = keeper, keeper.pid
            self.keeper_start_time = process_start_time(keeper.pid)
            # Its own session: the worker outlives the agent (and a Ctrl-C meant for it).
            proc = subprocess.Popen(
                [python, "-m", LAUNCHER, entrypoint],
                env=environment,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out_write,
                stderr=err_write,
                start_new_session=True,
                preexec_fn=preexec,
            )
        finally:
            for fd in (out_read, out_write, err_read, err_write):
                os.close(fd)
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
            "log_inode": self.log_inode,
            "keeper_pid": self.keeper_pid,
            "keeper_start_time": self.keeper_start_time,
            "outcome": self.outcome,
            "left_reported": self.left_reported,
            "code": self.code,
            "replied_seq": self.replied_seq,
            "acked_n": self.acked_n,
            "gpu": self.gpu,
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
            log_inode=d.get("log_inode"),
            keeper_pid=d.get("keeper_pid"),
            keeper_start_time=d.get("keeper_start_time"),
            outcome=d.get("outcome", ""),
            left_reported=bool(d.get("left_reported")),
            code=d.get("code"),
            replied_seq=int(d.get("replied_seq", 0)),
            acked_n=int(d.get("acked_n", 0)),
            gpu=d.get("gpu"),
        )
