"""A stand-in for a training worker that speaks the agent protocol (agent.protocol),
elastic membership included, without TensorFlow: the agent and control plane are
tested for real while training is outside the system.

It "trains" a step every 20 ms while it is a member; applies commands at a step that
depends only on their sequence number (so workers agree) and, as the runtime does,
reports the learning rate in force with each ``applied`` (it scales none: ``set_lr``
alone changes it); answers ``cluster`` messages
with ``rescaled`` or ``left`` (then exits 0), and reports ``rescaled`` when started in a
version after the first; started with ADAPTRAIN_JOINING=1 it reports
``standby`` after a pretend start-up and waits for a version listing its address. It
exits with status 3 when ``$FAKE_WORKER_DIR/crash-<host>_<port>`` appears, or at once when
started in version 1 as rank r while ``$FAKE_WORKER_DIR/crash-at-start-rank-<r>`` exists.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

PREFIX = "@@adaptrain "


ROOT = Path(__file__).resolve().parents[2]
channel = None  # agent.runtime.channel.AgentChannel when the agent gave us a socket


def send(message: dict) -> None:
    if channel is not None:
        channel.send(message)
        return
    sys.stdout.write(PREFIX + json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    env = os.environ
    peers = [p for p in env.get("ADAPTRAIN_PEERS", "").split(",") if p]
    joining = env.get("ADAPTRAIN_JOINING") == "1"
    address = env.get("ADAPTRAIN_ADDRESS") or peers[int(env["ADAPTRAIN_RANK"])]
    version = int(env.get("ADAPTRAIN_CLUSTER_VERSION", "0"))
    params = json.loads(env.get("ADAPTRAIN_PARAMS") or "{}")
    lr = float(params.get("lr") or params.get("hyperparameters", {}).get("lr", 0.01))
    members = [] if joining else peers
    crash_file = (
        Path(env.get("FAKE_WORKER_DIR", "/nonexistent")) / f"crash-{address.replace(':', '_')}"
    )
    lock = threading.Lock()
    inbox: list[dict] = []
    clusters: dict[int, list[str]] = {}

    taken: set[int] = set()

    def receive(message: dict) -> None:
        with lock:
            if message.get("type") == "command" and message["seq"] not in taken:
                taken.add(message["seq"])  # each command once, however often it is delivered
                inbox.append(message)
            elif message.get("type") == "cluster":
                clusters[int(message["version"])] = list(message["members"])

    def read_stdin() -> None:
        for line in sys.stdin:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            receive(message)
        os._exit(0)  # the agent went away

    global channel
    if env.get("ADAPTRAIN_AGENT_SOCKET"):
        sys.path.insert(0, str(ROOT))
        from agent.runtime.channel import AgentChannel

        channel = AgentChannel(
            env["ADAPTRAIN_AGENT_SOCKET"],
            on_message=receive,
            grace_s=float(env.get("ADAPTRAIN_AGENT_GRACE_S", "600")),
            on_orphaned=lambda: os._exit(0),
        )
        channel.start()
    else:
        threading.Thread(target=read_stdin, daemon=True).start()
    print(f"fake worker at {address}, joining={joining}, version {version}", flush=True)
    crash_at_start = (
        Path(env.get("FAKE_WORKER_DIR", "/nonexistent"))
        / f"crash-at-start-rank-{env.get('ADAPTRAIN_RANK')}"
    )
    if version == 1 and not joining and crash_at_start.exists():
        print(f"crashing at start as asked by {crash_at_start}", file=sys.stderr, flush=True)
        sys.exit(3)
    if joining:
        time.sleep(0.5)  # a pretend TensorFlow start-up
        send({"type": "standby", "address": address})
    elif version > 1:  # started in a version after the first, as the runtime it trains in
        send(
            {
                "type": "rescaled",
                "version": version,
                "rank": members.index(address),
                "size": len(members),
                "step": 0,
                "paused_s": 0.0,
            }
        )
    step = 0
    while True:
        if crash_file.exists():
            print(f"crashing as asked by {crash_file}", file=sys.stderr, flush=True)
            sys.exit(3)
        with lock:
            newer = sorted(v for v in clusters if v > version)
            commands, inbox[:] = list(inbox), []
        if newer:
            version = newer[-1]
            with lock:
                latest = clusters[version]
            if address in latest:
                members = latest
                send(
                    {
                        "type": "rescaled",
                        "version": version,
                        "rank": members.index(address),
                        "size": len(members),
                        "step": step,
                        "paused_s": 0.01,
                    }
                )
            elif not joining:
                send({"type": "left", "version": version, "step": step})
                sys.exit(0)
            joining = joining and address not in latest
        for command in commands:
            if joining:
                continue
            at = 1000 * int(command["seq"])
            if command["action"] == "stop" and "joiners" in (command.get("payload") or {}):
                continue  # the agents end the abandoned standbys; as the runtime, only its seq counts
            if command["action"] in (
                "set_batch_size",
                "set_lr",
                "stop",
                "checkpoint",
                "pause",
                "resume",
            ):
                if command["action"] == "set_lr":
                    lr = float(command["payload"]["value"])
                send(
                    {
                        "type": "applied",
                        "id": command["id"],
                        "seq": command["seq"],
                        "step": at,
                        "lr": lr,
                    }
                )
                if command["action"] == "stop":
                    sys.exit(0)
            else:
                send(
                    {
                        "type": "failed",
                        "id": command["id"],
                        "seq": command["seq"],
                        "error": f"action {command['action']!r} is not supported by this runtime",
                    }
                )
        if not joining:
            step += 1
            if step % 25 == 0 and members and members[0] == address:
                send(
                    {
                        "type": "metrics",
                        "points": [
                            {
                                "name": "workers",
                                "step": step,
                                "value": len(members),
                                "time": time.time(),
                            }
                        ],
                    }
                )
        time.sleep(0.02)


if __name__ == "__main__":
    main()
