"""Cost of the gradient-noise monitor: ``python -m bench.monitoring --json``.

Runs the digits example with 2 workers (real processes, native ring allreduce) with
the monitor off, on every step and every 8th step, several rounds interleaved, and
prints the median step time of each with its overhead relative to "none". The noise
scale, gradient variance and SNR come from one estimator, so they cost the same.
"""

from __future__ import annotations

import argparse
import json
import statistics

from agent.local import job_series, run_workers
from bench._stack import emit, log


def median_step_time(monitor_every: int, *, steps: int, workers: int, batch: int) -> float:
    messages = run_workers(workers, {"batch_size": batch, "lr": 0.05, "steps": steps, "log_every": 50,
                                     "monitor_every": monitor_every, "seed": 0})
    times = [t for step, t in sorted(job_series(messages[0], "step_time").items()) if step > steps // 5]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON lines (the only format)")
    args = parser.parse_args()
    settings = {"none": 0, "gns_interval_1": 1, "gns_interval_8": 8}
    results: dict[str, list[float]] = {name: [] for name in settings}
    for round_index in range(args.rounds):
        for name, every in settings.items():
            log(f"round {round_index + 1}/{args.rounds}: {name}")
            results[name].append(median_step_time(every, steps=args.steps, workers=args.workers, batch=args.batch))
    base = statistics.median(results["none"])
    for name, values in results.items():
        median = statistics.median(values)
        emit({"bench": "monitoring", "monitor": name, "workers": args.workers, "global_batch": args.batch,
              "median_step_s": round(median, 6), "overhead": round(median / base - 1.0, 4),
              "rounds": json.dumps([round(v, 6) for v in values])})


if __name__ == "__main__":
    main()
