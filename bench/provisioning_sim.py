"""Does goodput-driven provisioning pay? A trace simulator: ``python -m bench.provisioning_sim --json``.

Jobs with known curves arrive over time on a cluster of N slots (``--nodes`` × ``--slots-per-node``).
Each job has a step-time model (compute α + β·m, ring sync within and across nodes, as in
``controlplane.policies.goodput``), a gradient noise scale that grows as it trains (φ0 at
the start, ``growth``× at the end, as McCandlish et al. observe), the batch ``M0`` its lr was
tuned for, and an amount of work: M0-equivalent samples, done at the rate of its goodput.
Its user asked for a worker count (1, 2, 4 or 8) without knowing how well it scales, as in
the traces Pollux replays. Three classes differ in scalability: compute-heavy jobs with a
large noise scale (gain from many workers and a large batch), middling ones, and small
communication-bound models with a small noise scale (a second worker barely helps).

Schedulers, each acting every ``--interval`` seconds:

- ``fixed``: each job waits (FIFO with backfill) for the workers it asked for, keeps them
  and its user's batch (M0 per worker asked for: weak scaling) to the end;
- ``today``: adaptrain's scheduler as it is: an elastic job starts with what is free (at
  least 1) and is grown back to the size it asked for as slots free up, its user's batch;
- ``goodput_fixed_batch``: the goodput allocator (``controlplane.policies.allocation``) over
  every job present, batch kept at the user's (what allocation alone gives);
- ``goodput``: the allocator with each job's batch set to its best for its workers
  (``goodput.best_batch``, what ``optimize_goodput`` does), re-chosen as φ grows.

Every change in a running job's worker count costs it ``--restart-s`` seconds without
progress (the allocator weighs that as its restart penalty). Prints one JSON line per
scheduler with the medians over ``--seeds`` traces of the average and p99 job completion
time (arrival to end) and the makespan, each seed's figures, and one line of ratios
against ``fixed``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from controlplane.policies.allocation import JobDemand, allocate, nodes_for
from controlplane.policies.goodput import JobModel, StepTimeModel, best_batch

SCHEDULERS = ("fixed", "today", "goodput_fixed_batch", "goodput")

# (name, share of jobs, step-time model, φ0, φ growth over the run)
CLASSES = (
    ("scalable", 0.35, StepTimeModel(0.01, 0.002, 0.02, 0.002, 0.05, 0.01), 2000.0, 4.0),
    ("middling", 0.35, StepTimeModel(0.01, 0.0005, 0.02, 0.002, 0.04, 0.008), 400.0, 3.0),
    ("comm_bound", 0.30, StepTimeModel(0.01, 0.0004, 0.03, 0.003, 0.06, 0.01), 100.0, 2.0),
)
BASE_BATCH = 128
MAX_BATCH = 32 * BASE_BATCH
MAX_LOCAL_BATCH = 4 * BASE_BATCH  # the memory bound per worker
MAX_WORKERS = 16


@dataclass
class SimJob:
    key: int
    kind: str
    arrival: float
    step: StepTimeModel
    gns0: float
    growth: float
    work: float  # M0-equivalent samples
    asked: int
    done: float = 0.0
    workers: int = 0
    batch: int = BASE_BATCH
    blocked_until: float = 0.0
    finish: float | None = None
    moves: int = 0
    history: list[tuple[float, int]] = field(default_factory=list)

    @property
    def user_batch(self) -> int:
        """The batch its user chose: M0 per worker asked for (weak scaling, lr scaled to it)."""
        return min(MAX_BATCH, BASE_BATCH * self.asked)

    def gns(self) -> float:
        return self.gns0 * (1.0 + (self.growth - 1.0) * min(1.0, self.done / self.work))

    def model(self) -> JobModel:
        return JobModel(self.step, self.gns(), BASE_BATCH)


def make_trace(
    seed: int,
    jobs: int,
    mean_interarrival_s: float,
    median_hours: float,
    only: str | None = None,
) -> list[SimJob]:
    rng = np.random.default_rng(seed)
    shares = np.array([c[1] if only in (None, c[0]) else 0.0 for c in CLASSES])
    arrival = 0.0
    trace = []
    for key in range(jobs):
        kind, _, step, gns0, growth = CLASSES[
            int(rng.choice(len(CLASSES), p=shares / shares.sum()))
        ]
        # How long the job would take alone on one worker at its base batch.
        alone_s = 3600.0 * median_hours * float(rng.lognormal(0.0, 0.6))
        rate = float(JobModel(step, gns0, BASE_BATCH).goodput(BASE_BATCH, 1, 1))
        asked = int(rng.choice([1, 2, 4, 8], p=[0.3, 0.3, 0.25, 0.15]))
        trace.append(SimJob(key, kind, arrival, step, gns0, growth, alone_s * rate, asked))
        arrival += float(rng.exponential(mean_interarrival_s))
    return trace


def rate(job: SimJob, slots_per_node: int) -> float:
    """M0-equivalent samples per second with the job's workers and batch."""
    if job.workers == 0:
        return 0.0
    return float(
        job.model().goodput(job.batch, job.workers, nodes_for(job.workers, slots_per_node))
    )


def best_for(job: SimJob, workers: int, slots_per_node: int) -> int:
    return best_batch(
        job.model(),
        workers,
        nodes_for(workers, slots_per_node),
        min_batch=workers,
        max_batch=MAX_BATCH,
        max_local_batch=MAX_LOCAL_BATCH,
    ).batch


def decide(
    scheduler: str, now: float, present: list[SimJob], slots: int, args: argparse.Namespace
) -> dict[int, int]:
    """Workers per present job for the next interval."""
    if scheduler in ("fixed", "today"):
        want = {j.key: j.workers for j in present}
        free = slots - sum(want.values())
        for job in sorted(present, key=lambda j: j.arrival):
            if want[job.key] == 0:
                need = job.asked if scheduler == "fixed" else 1
                if need <= free:
                    want[job.key] = job.asked if scheduler == "fixed" else min(job.asked, free)
                    free -= want[job.key]
        if scheduler == "today":
            for job in sorted(present, key=lambda j: j.arrival):
                if 0 < want[job.key] < job.asked and free > 0:
                    grow = min(job.asked - want[job.key], free)
                    want[job.key] += grow
                    free -= grow
        return want
    fixed_batch = scheduler == "goodput_fixed_batch"
    demands = [
        JobDemand(
            key=j.key,
            model=j.model(),
            current=j.workers,
            min_workers=1,
            max_workers=min(MAX_WORKERS, slots),
            # Batch pinned at the user's or free within its bounds.
            min_batch=j.user_batch if fixed_batch else 1,
            max_batch=j.user_batch if fixed_batch else MAX_BATCH,
            max_local_batch=None if fixed_batch else MAX_LOCAL_BATCH,
        )
        for j in present
    ]
    penalty = min(0.9, args.restart_s / args.interval)
    return allocate(demands, slots, slots_per_node=args.slots_per_node, restart_penalty=penalty)


def simulate(scheduler: str, trace: list[SimJob], args: argparse.Namespace) -> dict[str, float]:
    jobs = [
        SimJob(j.key, j.kind, j.arrival, j.step, j.gns0, j.growth, j.work, j.asked) for j in trace
    ]
    slots = args.nodes * args.slots_per_node
    now = 0.0
    while any(j.finish is None for j in jobs):
        present = [j for j in jobs if j.arrival <= now and j.finish is None]
        if present:
            alloc = decide(scheduler, now, present, slots, args)
            assert sum(alloc.values()) <= slots, (scheduler, alloc)
            for job in present:
                k = alloc[job.key]
                if k != job.workers:
                    if job.workers > 0 and k > 0:
                        job.blocked_until = now + args.restart_s
                        job.moves += 1
                    job.workers = k
                    job.history.append((now, k))
                if k > 0:
                    job.batch = (
                        best_for(job, k, args.slots_per_node)
                        if scheduler == "goodput"
                        else job.user_batch
                    )
        # Advance one interval; a job that finishes inside it frees its slots at the next tick.
        end = now + args.interval
        for job in present:
            if job.workers == 0:
                continue
            start = max(now, job.blocked_until)
            if start >= end:
                continue
            r = rate(job, args.slots_per_node)
            need = (job.work - job.done) / r
            if start + need <= end:
                job.done = job.work
                job.finish = start + need
                job.workers = 0
            else:
                job.done += r * (end - start)
        now = end
        if now > 1e8:
            raise RuntimeError(f"{scheduler}: the simulation does not finish")
    jct = sorted(j.finish - j.arrival for j in jobs)  # type: ignore[operator]
    return {
        "avg_jct_s": statistics.fmean(jct),
        "p99_jct_s": float(np.percentile(jct, 99)),
        "makespan_s": max(j.finish for j in jobs),  # type: ignore[type-var]
        "moves_per_job": statistics.fmean(j.moves for j in jobs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--slots-per-node", type=int, default=4)
    parser.add_argument(
        "--interarrival-s", type=float, default=240.0, help="mean, Poisson arrivals"
    )
    parser.add_argument(
        "--median-hours", type=float, default=1.0, help="median job length alone on one worker"
    )
    parser.add_argument(
        "--interval", type=float, default=60.0, help="seconds between scheduling decisions"
    )
    parser.add_argument(
        "--restart-s", type=float, default=15.0, help="progress lost per worker-count change"
    )
    parser.add_argument(
        "--only", choices=[c[0] for c in CLASSES], help="every job of this class (jobs alike)"
    )
    parser.add_argument(
        "--json", action="store_true", help="JSON lines (the default prints a table too)"
    )
    args = parser.parse_args()
    if args.seeds < 1 or args.jobs < 1 or args.nodes < 1 or args.slots_per_node < 1:
        parser.error("--seeds, --jobs, --nodes and --slots-per-node must be ≥ 1")
    if args.interval <= 0 or args.restart_s < 0:
        parser.error("--interval must be > 0 and --restart-s ≥ 0")
    per_seed: dict[str, list[dict[str, float]]] = {s: [] for s in SCHEDULERS}
    for seed in range(args.seeds):
        trace = make_trace(seed, args.jobs, args.interarrival_s, args.median_hours, args.only)
        for scheduler in SCHEDULERS:
            per_seed[scheduler].append(simulate(scheduler, trace, args))
            print(f"[bench] seed {seed} {scheduler}: {per_seed[scheduler][-1]}", file=sys.stderr)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    common = {
        "date": stamp,
        "machine": "simulation (no hardware measured)",
        "command": " ".join(
            ["python -m bench.provisioning_sim --json", *(a for a in sys.argv[1:] if a != "--json")]
        ),
        "benchmark": "provisioning_sim",
        "seeds": args.seeds,
        "jobs": args.jobs,
        "slots": args.nodes * args.slots_per_node,
        "interval_s": args.interval,
        "restart_s": args.restart_s,
        "trace": f"only {args.only}" if args.only else "mixed scalability",
    }
    rows = []
    for scheduler in SCHEDULERS:
        runs = per_seed[scheduler]
        row = {**common, "scheduler": scheduler}
        for figure in ("avg_jct_s", "p99_jct_s", "makespan_s", "moves_per_job"):
            values = [r[figure] for r in runs]
            row[figure] = round(statistics.median(values), 1 if figure != "moves_per_job" else 2)
            row[f"per_seed_{figure}"] = [
                round(v, 1 if figure != "moves_per_job" else 2) for v in values
            ]
        rows.append(row)
    fixed = per_seed["fixed"]
    ratios = {**common, "measure": "against fixed (median over seeds of each seed's ratio)"}
    for scheduler in SCHEDULERS[1:]:
        for figure in ("avg_jct_s", "p99_jct_s", "makespan_s"):
            each = [r[figure] / f[figure] for r, f in zip(per_seed[scheduler], fixed, strict=True)]
            ratios[f"{scheduler}_{figure}_ratio"] = round(statistics.median(each), 3)
            ratios[f"{scheduler}_{figure}_ratio_range"] = [round(min(each), 3), round(max(each), 3)]
    rows.append(ratios)
    for row in rows:
        print(json.dumps(row), flush=True)
    if not args.json:
        print(
            f"\n{'scheduler':<22}{'avg JCT (h)':>12}{'p99 JCT (h)':>12}{'makespan (h)':>14}{'moves/job':>11}"
        )
        for row in rows[:-1]:
            print(
                f"{row['scheduler']:<22}{row['avg_jct_s'] / 3600:>12.2f}{row['p99_jct_s'] / 3600:>12.2f}"
                f"{row['makespan_s'] / 3600:>14.2f}{row['moves_per_job']:>11.2f}"
            )


if __name__ == "__main__":
    main()
