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
"""

from __future__ import annotations

import argparse
import json
import statistics

from agent.local import LocalJob
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic_cnn", choices=("synthetic_cnn", "digits"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON lines (the only format)")
    args = parser.parse_args()
    module = f"examples.{args.model}.train"
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


if __name__ == "__main__":
    main()
