"""From ``adaptrain slurm up --nodes 1`` to the node online, on a real one-machine Slurm
(devtools/slurm_cluster.py): ``python -m bench.slurm_up --json``.

Starts the control plane (no agent of its own) and a one-machine Slurm, then, ``--repeats``
times: runs ``adaptrain slurm up --nodes 1 --wait`` (which returns once the allocation's
node is online: enrolled, heartbeating) and times it, with the part Slurm's queue took
(sbatch's answer to the batch job RUNNING, from squeue, polled every 50 ms); then
``adaptrain slurm down`` and waits for the job to leave the queue. Prints one JSON line
with the median and every sample. Needs root and Debian's slurm-wlm + munge.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench._stack import emit, log, running_stack
from devtools.slurm_cluster import SlurmCluster, unavailable_reason

GOAL_S = 10.0


def _cli(stack, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "adaptrain", "--server", stack.url, "--token", stack.token, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"adaptrain {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def _watch_running(cluster: SlurmCluster, seen: dict[str, float], stop: threading.Event) -> None:
    """When each batch job was first seen RUNNING."""
    while not stop.is_set():
        for job_id, state in cluster.queue().items():
            if state.startswith("RUNNING"):
                seen.setdefault(job_id, time.monotonic())
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON lines (the only format)")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"bench.slurm_up: {reason}")
    root = Path(tempfile.mkdtemp(prefix="adaptrain-slurm-bench-"))
    cluster = SlurmCluster(root / "cluster")
    cluster.start()
    os.environ.update(
        {
            **cluster.env,
            "SLURM_ENABLED": "true",
            "SLURM_BIN_DIR": cluster.bin_dir(),
            "SLURM_AGENT_PYTHON": sys.executable,
            "SLURM_AGENT_ENV": f"ADAPTRAIN_SLURM_STATE_ROOT={root / 'agents'} AGENT_SLOTS=1",
            "SLURM_OUTPUT": str(root / "slurm-%j.out"),
            "SLURM_SYNC_INTERVAL_S": "1",
        }
    )
    seen: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_running, args=(cluster, seen, stop), daemon=True)
    watcher.start()
    samples, queued = [], []
    try:
        with running_stack(name="slurm_up") as stack:
            for i in range(args.repeats):
                start = time.monotonic()
                allocation = json.loads(
                    _cli(stack, "slurm", "up", "--nodes", "1", "--wait", "--json")
                )
                took = time.monotonic() - start
                job_id = allocation["slurm_job_id"]
                samples.append(took)
                if job_id in seen:
                    queued.append(seen[job_id] - start)
                log(f"up {i + 1}: node {allocation['node_names'][0]} online after {took:.2f} s")
                _cli(stack, "slurm", "down", str(allocation["id"]))
                deadline = time.monotonic() + 120
                while job_id in cluster.queue() and time.monotonic() < deadline:
                    time.sleep(0.2)
    finally:
        stop.set()
        watcher.join()
        cluster.stop()
    emit(
        {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python -m bench.slurm_up --json",
            "benchmark": "slurm_up",
            "repeats": args.repeats,
            "median_s": round(statistics.median(samples), 2),
            "samples_s": [round(s, 2) for s in samples],
            "median_until_slurm_running_s": round(statistics.median(queued), 2) if queued else None,
            "goal": f"median < {GOAL_S:.0f} s",
            "met": statistics.median(samples) < GOAL_S,
        }
    )


if __name__ == "__main__":
    main()
