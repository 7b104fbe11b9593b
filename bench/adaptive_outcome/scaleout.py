"""The scale-out experiment (KungFu Fig. 6): throughput with 1…N workers, and where the
template ``scale-out-while-efficient`` stops adding workers."""

from __future__ import annotations

import argparse
import statistics
import time

from bench.adaptive_outcome.common import (
    WORKER,
    log,
    template_policy,
    throughput_hyperparameters,
)
from bench.policy_driver import PolicyDriver, train
from controlplane.policies import rules


def steady_throughput(trace: list[dict], skip: int = 10) -> float | None:
    values = [r["throughput"] for r in trace[skip:]]
    return round(statistics.median(values), 1) if values else None


def experiment_scaleout(args: argparse.Namespace, common: dict) -> list[dict]:
    """Throughput at a fixed global batch with 1…max workers (separate runs), then runs
    that start with one worker and grow while the template says it pays; each seed runs
    every worker count in turn, so that a seed's efficiencies compare runs close in time
    (the machine's load drifts), and reports medians over seeds with their range."""
    hp = throughput_hyperparameters(args)
    common = {key: value for key, value in common.items() if key != "workers"}
    counts = range(1, args.max_workers + 1)
    measured: dict[int, list[float]] = {workers: [] for workers in counts}
    for seed in range(args.seeds):
        for workers in counts:
            trace = train(
                worker=WORKER,
                hp={**hp, "seed": seed},
                workers=workers,
                policy=None,
                max_steps=args.steps,
            )
            measured[workers].append(steady_throughput(trace["trace"]) or 0.0)
            log(f"scaleout seed {seed} {workers} workers: {measured[workers][-1]} samples/s")
    rows = []
    for workers in counts:
        runs = measured[workers]
        speedups = [t / one if one else 0.0 for t, one in zip(runs, measured[1], strict=True)]
        efficiencies = [s / workers for s in speedups]
        rows.append(
            {
                **common,
                "experiment": "scaleout",
                "system": "fixed workers",
                "workers": workers,
                "batch": args.batch,
                "throughput": statistics.median(runs),
                "throughput_per_seed": runs,
                "throughput_range": [min(runs), max(runs)],
                # Each seed's own ratio to its one-worker run, then the median over seeds.
                "efficiency": round(statistics.median(efficiencies), 3),
                "efficiency_range": [round(min(efficiencies), 3), round(max(efficiencies), 3)],
                "speedup": round(statistics.median(speedups), 3),
                "speedup_range": [round(min(speedups), 3), round(max(speedups), 3)],
            }
        )
    policy = template_policy(
        "scale-out-while-efficient", cooldown_s=args.cooldown_s, max=args.max_workers
    )
    policy_runs = [policy_run(args, {**hp, "seed": seed}, policy) for seed in range(args.seeds)]
    stops = [run["policy_stops_at"] for run in policy_runs]
    final = int(statistics.median_low(stops))
    at = {r["workers"]: r for r in rows}
    rows.append(
        {
            **common,
            "experiment": "scaleout",
            "system": "scale-out-while-efficient",
            "policy": f"scale-out-while-efficient (cooldown_s {args.cooldown_s}, "
            f"max {args.max_workers})",
            "policy_stops_at": final,
            "policy_stops_at_per_seed": stops,
            # Seed 0's run (what the plot shows); every seed's growths below.
            "growths": policy_runs[0]["growths"],
            "series": policy_runs[0]["series"],
            "per_seed_growths": [run["growths"] for run in policy_runs],
            "efficiency_at_stop": at[final]["efficiency"] if final in at else None,
            "efficiency_one_more": at[final + 1]["efficiency"] if final + 1 in at else None,
        }
    )
    return rows


def policy_run(args: argparse.Namespace, hp: dict, policy: rules.Policy) -> dict:
    """One run that starts with one worker and grows as the policy asks, for
    ``--scaleout-s`` seconds: where it stopped, its growths and its throughput series."""
    from agent.local import LocalJob

    driver = PolicyDriver(policy, batch_size=args.batch, lr=hp["lr"], workers=1)
    growths: list[dict] = []
    series: list[tuple[float, int, float]] = []
    with LocalJob(WORKER, hp, workers=1) as job:
        rank0 = job.members[0]
        started = time.monotonic()
        deadline = started + args.scaleout_s
        while time.monotonic() < deadline:
            _, message = job.wait_for(
                lambda address, m: (
                    address == rank0
                    and m["type"] == "metrics"
                    and any(p["name"] == "throughput" for p in m["points"])
                ),
                timeout_s=120,
            )
            points = message["points"]
            values = {p["name"]: p["value"] for p in points if "rank" not in p}
            step, now = points[0]["step"], points[0]["time"]
            series.append(
                (round(time.monotonic() - started, 2), driver.workers, values["throughput"])
            )
            for firing in driver.observe(step, now, now - (time.monotonic() - started), values):
                if firing.action_type != "scale_workers":
                    continue
                add = int(firing.value) - driver.workers
                growths.append(
                    {
                        "at_s": round(time.monotonic() - started, 2),
                        "step": step,
                        "to": int(firing.value),
                        "throughput_before": round(values["throughput"], 1),
                    }
                )
                log(f"scaleout policy (seed {hp['seed']}): grow to {firing.value} at step {step}")
                job.grow(add)  # as the agents carry out scale_workers: warm standby, new version
                driver.workers = int(firing.value)
        job.command("stop")
        job.wait(timeout_s=120)
    return {"policy_stops_at": driver.workers, "growths": growths, "series": series}
