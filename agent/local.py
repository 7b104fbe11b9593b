"""Run a training script as N local workers without the agent or the control plane.

    python -m agent.local --workers 2 examples.digits.train '{"batch_size": 64, "lr": 0.05, "steps": 500}'

Each worker gets the same environment the agent would give it (rank, peers on free
loopback ports, parameters); their protocol lines (metrics, command replies) are
collected and returned per rank. Used by the tests and benchmarks, and handy for trying
a script before submitting it as a job.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from agent import protocol

ROOT = Path(__file__).resolve().parent.parent


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


def run_workers(n: int, hyperparameters: dict, *, module: str = "examples.digits.train",
                timeout_s: float = 600, **params) -> dict[int, list[dict]]:
    """Run ``module`` as ``n`` workers to completion; return each rank's protocol messages.
    Raises RuntimeError with the worker's last output if one fails."""
    peers = ",".join(peer_list(n))
    procs = []
    for rank in range(n):
        env = {**os.environ, protocol.ENV_JOB: "1", protocol.ENV_RANK: str(rank), protocol.ENV_PEERS: peers,
               protocol.ENV_PARAMS: json.dumps({"hyperparameters": hyperparameters, **params}),
               protocol.ENV_FIRST_SEQ: "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.setdefault("COLLECTIVE_TIMEOUT", "60")
        procs.append(subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    messages = {}
    for rank, proc in enumerate(procs):
        out, err = proc.communicate(timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"worker {rank} exited with {proc.returncode}:\n{err[-3000:]}")
        messages[rank] = [json.loads(line[len(protocol.PREFIX):]) for line in out.splitlines()
                          if line.startswith(protocol.PREFIX)]
    return messages


def job_series(messages: list[dict], name: str) -> dict[int, float]:
    """A whole-job metric (reported by rank 0) as {step: value}."""
    return {p["step"]: p["value"] for m in messages if m["type"] == "metrics"
            for p in m["points"] if p["name"] == name and "rank" not in p}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("module", help="the training script as a module, e.g. examples.digits.train")
    parser.add_argument("hyperparameters", help="JSON object, e.g. '{\"batch_size\": 64, \"lr\": 0.05}'")
    args = parser.parse_args()
    messages = run_workers(args.workers, json.loads(args.hyperparameters), module=args.module)
    for name in ("loss", "accuracy", "val_accuracy"):
        series = job_series(messages[0], name)
        if series:
            step = max(series)
            print(f"{name} at step {step}: {series[step]:.4f}")


if __name__ == "__main__":
    main()
