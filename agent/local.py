"""Run a training script as N local workers without the agent or the control plane.

    python -m agent.local --workers 2 examples.digits.train '{"batch_size": 64, "lr": 0.05, "steps": 500}'

Each worker gets the same environment the agent would give it (rank, peers on free
loopback ports, parameters); their protocol lines (metrics, command replies) are
collected and returned per rank. Used by the tests and benchmarks, and handy for trying
a script before submitting it as a job.

:class:`LocalJob` drives workers the way the agent and the control plane do, for tests
and benchmarks of elasticity: it sends commands, announces cluster versions to grow or
shrink the job (with warm standby workers), and when a worker dies it announces a
version without it, so the survivors carry on.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent import protocol
from agent.protocol import vocabulary as v
from agent.protocol.worker import (
    ClusterLine,
    CommandLine,
    MetricsLine,
    StandbyLine,
    ToWorker,
    parse_from_worker,
    read_stdio_line,
)

ROOT = Path(__file__).resolve().parent.parent


def _user_path() -> str:
    """PYTHONPATH for the workers: the directory this was started in first (a user's own
    project: ``python -m agent.local --workers 2 train`` from the project's directory)."""
    return os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return free_peers(1)[0][1]


def free_peers(n: int) -> list[tuple[str, int]]:
    """``n`` distinct free (host, port) pairs on 127.0.0.1: the sockets stay bound until
    all are chosen, so no port is handed out twice."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname() for s in sockets]
    finally:
        for s in sockets:
            s.close()


def peer_list(n: int) -> list[str]:
    """``n`` distinct free ``127.0.0.1:port`` addresses, as a communicator takes them."""
    return [f"{host}:{port}" for host, port in free_peers(n)]


def run_workers(
    n: int,
    hyperparameters: dict,
    *,
    module: str = "examples.digits.train",
    timeout_s: float = 600,
    **params,
) -> dict[int, list[dict]]:
    """Run ``module`` as ``n`` workers to completion; return each rank's protocol messages.
    Raises RuntimeError with the worker's last output if one fails."""
    peers = ",".join(peer_list(n))
    procs = []
    for rank in range(n):
        env = {
            **os.environ,
            "PYTHONPATH": _user_path(),
            protocol.ENV_JOB: "1",
            protocol.ENV_RANK: str(rank),
            protocol.ENV_PEERS: peers,
            protocol.ENV_PARAMS: json.dumps({"hyperparameters": hyperparameters, **params}),
            protocol.ENV_FIRST_SEQ: "0",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        env.setdefault("COLLECTIVE_TIMEOUT", "60")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "agent.runtime.launcher", module],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    # Every worker's pipes are drained at once: read one after another, a worker whose
    # output outgrew its pipe (a long run) would block on a write while the others wait
    # for it in a collective, until the collective timeout fails the run.
    # The first worker to fail stops the others, which could not finish without it.
    outputs: dict[int, tuple[str, str]] = {}
    timed_out: list[int] = []
    failed: list[int] = []  # in the order they ended

    def drain(rank: int, proc: subprocess.Popen) -> None:
        try:
            outputs[rank] = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out.append(rank)
            proc.kill()
            outputs[rank] = proc.communicate()
        if proc.returncode != 0 and not timed_out:
            failed.append(rank)
            for other in procs:
                if other.poll() is None:
                    other.kill()

    readers = [
        threading.Thread(target=drain, args=(rank, proc), name=f"run-workers-{rank}", daemon=True)
        for rank, proc in enumerate(procs)
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    if timed_out:
        raise RuntimeError(
            f"worker(s) {sorted(timed_out)} still running after {timeout_s} s; killed them"
        )
    if failed:
        rank = failed[0]
        raise RuntimeError(
            f"worker {rank} exited with {procs[rank].returncode}:\n{outputs[rank][1][-3000:]}"
        )
    return {rank: _protocol_lines(outputs[rank][0]) for rank in range(len(procs))}


def _protocol_lines(stdout: str) -> list[dict]:
    """The protocol lines in a worker's stdout, each checked against its frame."""
    lines = [m for m in map(read_stdio_line, stdout.splitlines()) if m is not None]
    for line in lines:
        parse_from_worker(line)
    return lines


class LocalJob:
    """Workers of ``module`` on this machine with elastic membership, driven like the agent.

    ``members`` is the current cluster version's list of worker addresses (rank order).
    Every protocol message is kept in ``messages[address]`` and also queued for
    :meth:`wait_for`. With ``replace_failed`` (the default) a worker that exits with a
    non-zero status is dropped from the job by announcing a version without it."""

    def __init__(
        self,
        module: str,
        hyperparameters: dict,
        *,
        workers: int,
        replace_failed: bool = True,
        env: dict[str, str] | None = None,
        **params,
    ):
        self.module = module
        self.params = {"hyperparameters": hyperparameters, **params}
        self.env = {
            **os.environ,
            "PYTHONPATH": _user_path(),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            **(env or {}),
        }
        self.env.setdefault("COLLECTIVE_TIMEOUT", "30")
        self.version = 0
        self.members = peer_list(workers)
        self.procs: dict[str, subprocess.Popen] = {}
        self.messages: dict[str, list[dict]] = {}
        self.stderr: dict[str, list[str]] = {}
        self.exit_codes: dict[str, int] = {}
        self.replace_failed = replace_failed
        self.seq = 0
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.RLock()
        self._closed = False
        for rank, address in enumerate(self.members):
            self._spawn(
                address, {protocol.ENV_RANK: str(rank), protocol.ENV_PEERS: ",".join(self.members)}
            )
        threading.Thread(target=self._watch, name="local-job-watch", daemon=True).start()

    # -- processes ---------------------------------------------------------------------
    def _spawn(self, address: str, extra: dict[str, str]) -> None:
        env = {
            **self.env,
            protocol.ENV_JOB: "1",
            protocol.ENV_ADDRESS: address,
            protocol.ENV_CLUSTER_VERSION: str(self.version),
            protocol.ENV_PARAMS: json.dumps(self.params),
            protocol.ENV_FIRST_SEQ: "0",
            **extra,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.runtime.launcher", self.module],
            cwd=ROOT,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.procs[address] = proc
        self.messages[address] = []
        self.stderr[address] = []
        threading.Thread(target=self._read, args=(address, proc), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(address, proc), daemon=True).start()

    def _read(self, address: str, proc: subprocess.Popen) -> None:
        for text in proc.stdout:
            try:
                message = read_stdio_line(text)
                if message is None:
                    continue  # log output
                parse_from_worker(message)  # a line that is not a valid frame is a bug
            except ValueError as exc:  # ProtocolError included
                self.stderr[address].append(f"protocol error: {exc}")
                continue
            self.messages[address].append(message)
            self._queue.put((address, message))

    def _read_stderr(self, address: str, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.stderr[address].append(line.rstrip("\n"))
            del self.stderr[address][:-200]

    def _watch(self) -> None:
        while not self._closed:
            time.sleep(0.05)
            with self._lock:
                for address, proc in list(self.procs.items()):
                    code = proc.poll()
                    if code is None or address in self.exit_codes:
                        continue
                    self.exit_codes[address] = code
                    self._queue.put((address, {"type": v.EXITED, "code": code}))
                    if (
                        code != 0
                        and self.replace_failed
                        and address in self.members
                        and len(self.members) > 1
                    ):
                        self.announce([m for m in self.members if m != address])

    def _write(self, address: str, line: ToWorker) -> None:
        proc = self.procs[address]
        if proc.poll() is not None:
            return
        try:
            proc.stdin.write(json.dumps(line.to_dict()) + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    # -- driving the job ---------------------------------------------------------------
    def command(self, action: str, value=None) -> int:
        """Send a command to every worker; returns its id."""
        with self._lock:
            self.seq += 1
            line = CommandLine(
                id=1000 + self.seq,
                seq=self.seq,
                action=action,
                payload={} if value is None else {"value": value},
            )
            for address in list(self.procs):
                self._write(address, line)
            return line.id

    def announce(self, members: list[str]) -> int:
        """Make ``members`` the next cluster version; returns its number."""
        with self._lock:
            self.version += 1
            line = ClusterLine(version=self.version, members=tuple(members))
            for address in set(self.members) | set(members):
                self._write(address, line)
            self.members = list(members)
            return self.version

    def start_standby(self, count: int) -> list[str]:
        """Start ``count`` warm standby workers (not members yet); returns their addresses."""
        with self._lock:
            addresses = peer_list(count)
            for address in addresses:
                self._spawn(address, {protocol.ENV_JOINING: "1"})
            return addresses

    def wait_standby(self, addresses: list[str], timeout_s: float = 120) -> None:
        pending = set(addresses)
        self.wait_for(
            lambda address, message: (
                message["type"] == StandbyLine.TYPE and not pending.discard(address) and not pending
            ),
            timeout_s,
            already=True,
        )

    def grow(self, count: int, *, standby: bool = True, timeout_s: float = 120) -> int:
        """Add ``count`` workers. With ``standby`` they are started and made ready before
        the new version is announced, so training pauses only for the switch."""
        addresses = self.start_standby(count)
        if standby:
            self.wait_standby(addresses, timeout_s)
        return self.announce(self.members + addresses)

    def shrink(self, count: int) -> int:
        """Remove the ``count`` highest ranks."""
        return self.announce(self.members[: len(self.members) - count])

    def kill(self, address: str, sig: int = signal.SIGKILL) -> None:
        self.procs[address].send_signal(sig)

    def wait_for(
        self,
        predicate: Callable[[str, dict], bool],
        timeout_s: float = 120,
        *,
        already: bool = False,
    ) -> tuple[str, dict]:
        """Block until a protocol message satisfies ``predicate(address, message)``
        (with ``already``, messages received before the call count too)."""
        if already:
            for address, messages in list(self.messages.items()):
                for message in list(messages):
                    if predicate(address, message):
                        return address, message
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                address, message = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if predicate(address, message):
                return address, message
        raise TimeoutError(
            f"no matching worker message within {timeout_s:.0f} s; last errors: "
            + " | ".join(f"{a}: {' / '.join(e[-3:])}" for a, e in self.stderr.items() if e)
        )

    def wait(self, timeout_s: float = 600) -> dict[str, int]:
        """Wait for every worker to exit; returns their exit codes by address."""
        deadline = time.monotonic() + timeout_s
        for proc in list(self.procs.values()):
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        time.sleep(0.1)
        return {address: proc.returncode for address, proc in self.procs.items()}

    def close(self) -> None:
        self._closed = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait()

    def __enter__(self) -> LocalJob:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def job_series(messages: list[dict], name: str) -> dict[int, float]:
    """A whole-job metric (reported by rank 0) as {step: value}."""
    lines = (parse_from_worker(m) for m in messages)
    return {
        p.step: p.value
        for line in lines
        if isinstance(line, MetricsLine)
        for p in line.points
        if p.name == name and p.rank is None
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "module",
        help="the entrypoint: a module (examples.digits.train) or module:function (train:main)",
    )
    parser.add_argument(
        "hyperparameters", help='JSON object, e.g. \'{"batch_size": 64, "lr": 0.05}\''
    )
    args = parser.parse_args()
    messages = run_workers(args.workers, json.loads(args.hyperparameters), module=args.module)
    for name in ("loss", "accuracy", "val_accuracy"):
        series = job_series(messages[0], name)
        if series:
            step = max(series)
            print(f"{name} at step {step}: {series[step]:.4f}")


if __name__ == "__main__":
    main()
