"""A stand-in for a training worker for the fault tests (tests/faults/): it speaks the
agent protocol over its agent channel (agent.runtime.channel), without TensorFlow, and
leaves evidence a test can count.

It takes ``hyperparameters.steps`` steps, one every ``$FAULT_WORKER_STEP_S`` seconds
(default 0.01), and reports a ``loss`` point with its rank at every step: a job of W
workers stores exactly W × steps points when none is lost or doubled. It applies
``set_lr`` (and the other value-free actions) at the next step, each sequence number once,
and appends ``<seq> <command id> <step>`` to ``$FAULT_WORKER_DIR/applied-<job>-<rank>``
for each application (a command applied twice shows up twice). It finishes with status 0,
telling the agent so as the launcher does (waiting, up to the channel's grace, for an
agent to take its last messages); it exits with status 3 when
``$FAULT_WORKER_DIR/crash-<job>-<rank>`` appears.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.runtime.channel import AgentChannel  # noqa: E402


def main() -> int:
    env = os.environ
    params = json.loads(env.get("ADAPTRAIN_PARAMS") or "{}")
    hyper = params.get("hyperparameters") or {}
    steps = int(hyper.get("steps", 100))
    step_s = float(env.get("FAULT_WORKER_STEP_S", "0.01"))
    rank = int(env["ADAPTRAIN_RANK"])
    job = env.get("ADAPTRAIN_JOB", "0")
    folder = Path(env.get("FAULT_WORKER_DIR", "/tmp"))
    applied_log = folder / f"applied-{job}-{rank}"
    crash_file = folder / f"crash-{job}-{rank}"
    lock = threading.Lock()
    inbox: list[dict] = []
    taken: set[int] = set()

    def receive(message: dict) -> None:
        with lock:
            if message.get("type") == "command" and message["seq"] not in taken:
                taken.add(message["seq"])
                inbox.append(message)

    channel = AgentChannel(
        env["ADAPTRAIN_AGENT_SOCKET"],
        on_message=receive,
        grace_s=float(env.get("ADAPTRAIN_AGENT_GRACE_S", "600")),
        on_orphaned=lambda: os._exit(4),
    )
    channel.start()
    print(f"fault worker rank {rank} of job {job}: {steps} steps", flush=True)
    for step in range(1, steps + 1):
        if crash_file.exists():
            print(f"crashing as asked by {crash_file}", file=sys.stderr, flush=True)
            os._exit(3)
        with lock:
            commands, inbox[:] = list(inbox), []
        for command in commands:
            if command["action"] == "scale_workers":
                continue
            with open(applied_log, "a") as f:
                f.write(f"{command['seq']} {command['id']} {step}\n")
            channel.send(
                {
                    "type": "applied",
                    "id": command["id"],
                    "seq": command["seq"],
                    "step": step,
                    "lr": float((command.get("payload") or {}).get("value") or 0.01),
                }
            )
        channel.send(
            {
                "type": "metrics",
                "points": [
                    {
                        "name": "loss",
                        "step": step,
                        "value": 1.0 / step,
                        "rank": rank,
                        "time": time.time(),
                    }
                ],
            }
        )
        time.sleep(step_s)
    print(f"fault worker rank {rank}: finished {steps} steps", flush=True)
    channel.send({"type": "exit", "code": 0})
    if not channel.wait_flushed(channel.grace_s):
        print("no agent took this worker's last messages", file=sys.stderr, flush=True)
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
