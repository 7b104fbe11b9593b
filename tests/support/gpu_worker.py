"""A stand-in training worker for tests/e2e/test_gpu_nodes.py: it records the GPU the
agent gave it and reports a step every fraction of a second until told to stop — without
TensorFlow, so that the agent's GPU pinning, telemetry and re-attach are tested for real
while training (and the GPUs: a recorded nvidia-smi) are outside the system.

It writes its environment (``CUDA_VISIBLE_DEVICES`` and the rest of the pinning's
variables, ``ADAPTRAIN_*``) and pid to ``$GPU_WORKER_DIR/job-<job>.<address>.json``,
then reports ``loss`` for this worker at steps 1, 2, … over the agent channel, and
answers ``stop`` with ``applied`` and exits 0.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from agent.protocol.worker import MetricPoint, MetricsLine
from agent.runtime.channel import AgentChannel

KEYS = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "TF_FORCE_GPU_ALLOW_GROWTH")


def main() -> None:
    stop = threading.Event()
    channel: AgentChannel | None = None

    def receive(message: dict) -> None:
        if message.get("type") == "command" and message.get("action") == "stop":
            assert channel is not None
            channel.send({"type": "applied", "id": message["id"], "seq": message["seq"], "step": 0})
            stop.set()

    channel = AgentChannel(
        os.environ["ADAPTRAIN_AGENT_SOCKET"],
        on_message=receive,
        grace_s=float(os.environ.get("ADAPTRAIN_AGENT_GRACE_S", "600")),
        on_orphaned=stop.set,
    )
    channel.start()
    env = {k: v for k, v in os.environ.items() if k.startswith("ADAPTRAIN_") or k in KEYS}
    env.pop("ADAPTRAIN_FABRIC_SECRET", None)
    name = f"job-{os.environ['ADAPTRAIN_JOB']}.{os.environ['ADAPTRAIN_ADDRESS']}.json"
    path = Path(os.environ["GPU_WORKER_DIR"]) / name.replace(":", "_")
    path.with_suffix(".tmp").write_text(json.dumps({"pid": os.getpid(), "env": env}))
    path.with_suffix(".tmp").replace(path)
    rank = int(os.environ.get("ADAPTRAIN_RANK", "0"))
    step = 0
    while not stop.wait(0.3):
        step += 1
        point = MetricPoint(name="loss", step=step, value=1.0 / step, time=time.time(), rank=rank)
        channel.send(MetricsLine(points=(point,)).to_dict())


if __name__ == "__main__":
    main()
