"""A stand-in training worker for the log tests: it prints what its script says, then
ends as told — without TensorFlow, so the agent's log capture and shipping and the
control plane are tested for real while training is outside the system.

Run as a job's entrypoint by the real launcher (``python -m agent.runtime.launcher
tests.support.log_worker``). Its script is JSON, from ``$LOG_WORKER_SCRIPT``, or — in the
end-to-end tests, where the agent starts every worker with the same environment — from
``$LOG_WORKER_DIR/seed-<seed>.json``, ``seed`` being the job's hyper-parameter::

    {"import": "broken_module",   # import this first (e.g. user code with a syntax error)
     "lines": 100,                # print this many numbered lines: "line <i> of worker <rank>"
     "rate": 200,                 # lines per second (0: as fast as it can)
     "stderr_every": 10,          # every tenth line goes to stderr instead
     "long_line": 0,              # then print one line of this many characters
     "then": "exit",              # "exit", or "train": wait for a stop command
     "raise": "",                 # then raise RuntimeError(this) (a traceback on stderr)
     "exit_code": 0}

It opens the agent channel when the agent gave it a socket (answering ``stop`` with
``applied`` and exiting 0), so the agent supervises it as it does a real worker.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path


def _script() -> dict:
    raw = os.environ.get("LOG_WORKER_SCRIPT")
    if raw:
        return json.loads(raw)
    params = json.loads(os.environ.get("ADAPTRAIN_PARAMS") or "{}")
    seed = params.get("hyperparameters", {}).get("seed", 0)
    return json.loads((Path(os.environ["LOG_WORKER_DIR"]) / f"seed-{seed}.json").read_text())


def main() -> None:
    script = _script()
    if script.get("import"):
        importlib.import_module(script["import"])
    stop = threading.Event()
    if os.environ.get("ADAPTRAIN_AGENT_SOCKET"):
        from agent.runtime.channel import AgentChannel

        channel: AgentChannel | None = None

        def receive(message: dict) -> None:
            if message.get("type") == "command" and message.get("action") == "stop":
                assert channel is not None
                channel.send(
                    {"type": "applied", "id": message["id"], "seq": message["seq"], "step": 0}
                )
                stop.set()

        channel = AgentChannel(
            os.environ["ADAPTRAIN_AGENT_SOCKET"],
            on_message=receive,
            grace_s=float(os.environ.get("ADAPTRAIN_AGENT_GRACE_S", "600")),
            on_orphaned=stop.set,
        )
        channel.start()
    rank = os.environ.get("ADAPTRAIN_RANK", "0")
    rate = float(script.get("rate", 0))
    every = int(script.get("stderr_every", 0))
    start = time.monotonic()
    for i in range(int(script.get("lines", 0))):
        if stop.is_set():
            break
        out = sys.stderr if every and i % every == every - 1 else sys.stdout
        print(f"line {i} of worker {rank}", file=out)
        if rate:
            ahead = start + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    if script.get("long_line"):
        print("x" * int(script["long_line"]))
    if script.get("then") == "train":
        stop.wait()
    if script.get("raise"):
        raise RuntimeError(script["raise"])
    sys.exit(int(script.get("exit_code", 0)))


if __name__ == "__main__":
    main()
