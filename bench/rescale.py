"""How long training stands still for a resize: ``python -m bench.rescale --json``.

Runs a job of real worker processes (``agent.local.LocalJob``, native TCP collectives)
and resizes it the way the control plane does: grow 2→3 from a warm standby (started,
TensorFlow imported, model built, step traced, waiting) and without one (the new
version is announced as the joiner starts, so the survivors wait for it), and shrink
3→2.

``paused_s`` is measured from outside, on rank 0's per-step timestamps: the time
between the last step before the switch and the first step after it, less the median
step time of the new size — everything the resize added (reconnecting, state transfer,
a joiner's first step). ``switch_s`` is what the slowest member reports for the
switch itself (boundary to state received). Prints one JSON line per operation with
medians over ``--repeats``: ``{"op","from","to","standby","paused_s","switch_s",
"model","repeats","runs"}``.

``--framework torch`` resizes a job of the ``*_torch`` examples (``agent.runtime.torch``)
the same way, and then does the same resizes to TorchElastic: ``torchrun`` agents, one
worker each, with a c10d rendezvous (``bench/_torchelastic_worker.py``: DDP over gloo,
a checkpoint after every step, restored by every restarted worker). TorchElastic grows
when a new agent joins the rendezvous and shrinks when a node is lost (its agent and
its worker killed: torchrun puts each worker in a session of its own, so killing only
the agent's process group would leave the worker training and the job would never
shrink); either way it stops and restarts every worker. Its lines have ``"system":
"torchelastic"`` (ours ``"adaptrain"``), ``paused_s`` read the same way from rank 0's
step times, ``before_restart_s`` (the part of the pause before the restarted rank 0
process began: noticing the change, the rendezvous, spawning) and no ``switch_s``. Our
shrink is the control plane's planned removal of the highest rank; TorchElastic has no
planned removal that spares a restart, so its shrink is a lost node.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.local import ROOT, LocalJob, free_port
from bench._stack import emit, log


def _reached(step: int):
    return lambda address, m: (
        m["type"] == "metrics"
        and any(p["name"] == "loss" and p["step"] >= step for p in m["points"])
    )


def _step_times(job: LocalJob) -> dict[int, float]:
    """Rank 0's wall-clock time at the end of each step (its whole-job loss points)."""
    times: dict[int, float] = {}
    for messages in list(job.messages.values()):
        for m in list(messages):
            if m["type"] == "metrics":
                for p in m["points"]:
                    if p["name"] == "loss" and "rank" not in p:
                        times[p["step"]] = p["time"]
    return times


def _paused(job: LocalJob, version: int, members: int) -> tuple[float, float, int]:
    """(pause seen from rank 0's step times, slowest member's reported switch, resume step)."""
    replies = [
        job.wait_for(lambda a, m: m["type"] == "rescaled" and m["version"] == version, 300)[1]
        for _ in range(members)
    ]
    step = replies[0]["step"]
    job.wait_for(_reached(step + 12), 300)
    times = _step_times(job)
    after = [
        times[s + 1] - times[s] for s in range(step + 2, step + 12) if s in times and s + 1 in times
    ]
    gap = times[step + 1] - times[step]
    return max(gap - statistics.median(after), 0.0), max(r["paused_s"] for r in replies), step


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``), children first."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop(0)
        children = []
        for task in Path(f"/proc/{parent}/task").glob("*/children"):  # any thread's
            try:
                children += task.read_text().split()
            except OSError:
                pass
        found += [int(c) for c in children]
        queue += [int(c) for c in children]
    return found


# TorchElastic's rendezvous settings: a 1 s last call (the default 30 s would add 30 s to
# every grow), and its node heartbeat at 1 s × 3 misses instead of 5 s × 3: a killed
# node's entry in the finished round is removed only when its heartbeat expires, and
# the survivors cannot start the next round before that, so the default adds ~15 s to
# every shrink. Both are TorchElastic's own documented knobs, set in its favour.
TORCHELASTIC_RDZV_CONF = (
    "last_call_timeout=1,join_timeout=300,keep_alive_interval=1,keep_alive_max_attempt=3"
)


class TorchElastic:
    """``torchrun`` agents (one worker each) on one c10d rendezvous; rank 0's step log."""

    def __init__(self, model: str, batch: int, work: Path, rdzv_conf: str = TORCHELASTIC_RDZV_CONF):
        self.model, self.batch, self.work = model, batch, work
        self.rdzv_conf = rdzv_conf
        self.port = free_port()
        self.step_log = work / "steps.jsonl"
        self.agents: list[subprocess.Popen] = []

    def start_agent(self) -> None:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1:4",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{self.port}",
            "--rdzv-id=bench-rescale",
            f"--rdzv-conf={self.rdzv_conf}",
            "--max-restarts=100",
            "--monitor-interval=0.2",
            "-m",
            "bench._torchelastic_worker",
            "--model",
            self.model,
            "--global-batch",
            str(self.batch),
            "--checkpoint",
            str(self.work / "checkpoint.pt"),
        ]
        env = {
            **os.environ,
            "BENCH_STEP_LOG": str(self.step_log),
            "PYTHONPATH": str(ROOT),
            # The opt-out of sharing the rank-0 agent's TCPStore with the workers: with it
            # (the default since PyTorch 2.4) an agent joining a running job waits forever
            # for the new round's MASTER_ADDR, which the old rank 0 never publishes again.
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        }
        output = open(self.work / f"agent-{len(self.agents)}.log", "ab")  # noqa: SIM115
        self.agents.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        output.close()

    def steps(self) -> list[dict]:
        if not self.step_log.exists():
            return []
        return [json.loads(line) for line in self.step_log.read_text().splitlines() if line]

    def wait_for_size(self, size: int, steps: int, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(r["size"] == size for r in self.steps()[-steps:]) >= steps:
                return
            time.sleep(0.2)
        raise RuntimeError(f"torchelastic did not train {steps} steps at {size} workers")

    @staticmethod
    def _kill_node(agent: subprocess.Popen) -> None:
        """SIGKILL an agent and its workers, as a lost node: torchrun starts each worker
        in a session of its own, so killing the agent's process group leaves the worker
        training on as an orphan (and the job never shrinks)."""
        workers = _descendants(agent.pid)
        try:
            os.killpg(agent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        agent.wait()

    def kill_last_agent(self) -> None:
        self._kill_node(self.agents.pop())

    def close(self) -> None:
        for agent in self.agents:
            self._kill_node(agent)


def _elastic_pause(records: list[dict], since: int, size: int) -> tuple[float, float]:
    """Between the last step before record ``since`` changed the size and the first step
    at ``size``, less the median step time at ``size``; and the part of it before the
    restarted rank 0 worker process started (the agents noticing, rendezvous, spawn)."""
    new = [i for i in range(since, len(records)) if records[i]["size"] == size]
    first = new[0]
    after = [
        records[i + 1]["time"] - records[i]["time"]
        for i in new[1:11]
        if i + 1 < len(records) and records[i + 1]["size"] == size
    ]
    gap = records[first]["time"] - records[first - 1]["time"]
    before_start = (
        records[first].get("started", records[first - 1]["time"]) - records[first - 1]["time"]
    )
    return max(gap - statistics.median(after), 0.0), max(before_start, 0.0)


def run_torchelastic(
    model: str, batch: int, repeats: int, rdzv_conf: str = TORCHELASTIC_RDZV_CONF
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """TorchElastic's pauses per operation, and the part of each before the new workers started."""
    pauses: dict[str, list[float]] = {"grow": [], "shrink": []}
    agents: dict[str, list[float]] = {"grow": [], "shrink": []}
    with tempfile.TemporaryDirectory(prefix="bench-torchelastic-") as work:
        os.environ.get("BENCH_KEEP") and log(f"torchelastic logs in {work}")
        elastic = TorchElastic(model, batch, Path(work), rdzv_conf)
        try:
            for _ in range(2):
                elastic.start_agent()
            elastic.wait_for_size(2, 10)
            for repeat in range(repeats):
                log(f"torchelastic repeat {repeat + 1}/{repeats}: grow 2→3 (a new agent)")
                since = len(elastic.steps())
                elastic.start_agent()
                elastic.wait_for_size(3, 12)
                paused, before = _elastic_pause(elastic.steps(), since, 3)
                pauses["grow"].append(paused)
                agents["grow"].append(before)
                log(f"torchelastic repeat {repeat + 1}/{repeats}: shrink 3→2 (an agent killed)")
                since = len(elastic.steps())
                elastic.kill_last_agent()
                elastic.wait_for_size(2, 12)
                paused, before = _elastic_pause(elastic.steps(), since, 2)
                pauses["shrink"].append(paused)
                agents["shrink"].append(before)
        finally:
            elastic.close()
    return pauses, agents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic_cnn", choices=("synthetic_cnn", "digits"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--framework",
        choices=("tensorflow", "torch"),
        default="tensorflow",
        help="the runtime to resize; torch also measures TorchElastic (torchrun, c10d)",
    )
    parser.add_argument(
        "--skip-torchelastic",
        action="store_true",
        help="with --framework torch: resize only our runtime, not TorchElastic",
    )
    parser.add_argument(
        "--torchelastic-rdzv-conf",
        default=TORCHELASTIC_RDZV_CONF,
        help="torchrun's --rdzv-conf (default: 1 s last call, 1 s × 3 heartbeat)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines (the only format)")
    args = parser.parse_args()
    suffix = "_torch" if args.framework == "torch" else ""
    module = f"examples.{args.model}{suffix}.train"
    batch = 128 if args.model == "synthetic_cnn" else 64
    keys = (("grow", True), ("grow", False), ("shrink", False))
    runs: dict[tuple[str, bool], list[float]] = {k: [] for k in keys}
    switches: dict[tuple[str, bool], list[float]] = {k: [] for k in keys}
    # log_every=1: rank 0 timestamps every step, which is what the pause is read from.
    hp = {"steps": 10**9, "log_every": 1, "monitor_every": 0, "seed": 0}
    # Without a standby the members wait in the new version for a cold joiner, whose start
    # (TensorFlow import, model build, first trace) must fit in the collective timeout.
    with LocalJob(
        module, hp, workers=2, batch_size=batch, lr=0.01, env={"COLLECTIVE_TIMEOUT": "180"}
    ) as job:
        job.wait_for(_reached(10), 600)
        for repeat in range(args.repeats):
            for standby in (True, False):
                log(
                    f"repeat {repeat + 1}/{args.repeats}: grow 2→3 {'with' if standby else 'without'} standby"
                )
                version = job.grow(1, standby=standby, timeout_s=300)
                paused, switch, _ = _paused(job, version, 3)
                runs[("grow", standby)].append(paused)
                switches[("grow", standby)].append(switch)
                log(f"repeat {repeat + 1}/{args.repeats}: shrink 3→2")
                version = job.shrink(1)
                paused, switch, _ = _paused(job, version, 2)
                runs[("shrink", False)].append(paused)
                switches[("shrink", False)].append(switch)
        job.command("stop")
        job.wait(120)
    for (op, standby), values in runs.items():
        emit(
            {
                "bench": "rescale",
                "framework": args.framework,
                "system": "adaptrain",
                "op": op,
                "from": 2 if op == "grow" else 3,
                "to": 3 if op == "grow" else 2,
                "standby": standby,
                "paused_s": round(statistics.median(values), 4),
                "switch_s": round(statistics.median(switches[(op, standby)]), 4),
                "model": args.model,
                "repeats": len(values),
                "runs": json.dumps([round(v, 4) for v in values]),
            }
        )

    if args.framework == "torch" and not args.skip_torchelastic:
        pauses, agents = run_torchelastic(
            args.model, batch, args.repeats, args.torchelastic_rdzv_conf
        )
        for op, values in pauses.items():
            emit(
                {
                    "bench": "rescale",
                    "framework": "torch",
                    "system": "torchelastic",
                    "op": op,
                    "from": 2 if op == "grow" else 3,
                    "to": 3 if op == "grow" else 2,
                    "standby": False,
                    "paused_s": round(statistics.median(values), 4),
                    # Of the pause, the time before the restarted rank 0 process began.
                    "before_restart_s": round(statistics.median(agents[op]), 4),
                    "rdzv_conf": args.torchelastic_rdzv_conf,
                    "model": args.model,
                    "repeats": len(values),
                    "runs": json.dumps([round(v, 4) for v in values]),
                }
            )


if __name__ == "__main__":
    main()
