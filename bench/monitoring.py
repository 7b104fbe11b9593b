"""Cost of the gradient-noise monitor: ``python -m bench.monitoring --json``.

Runs each model (``--models``: the digits example, a ~1 ms step where any per-step cost
shows, and synthetic_cnn, a 2.2 M-parameter CNN) with 2 workers (real processes, native
allreduce) with the monitor off, on every step and every 8th step, several rounds
interleaved, and prints the median step time of each with its overhead relative to
"none". The noise scale, gradient variance and SNR come from one estimator (two squared
norms per monitored step), so one line covers all three.
"""

from __future__ import annotations

import argparse
import json
import statistics

from agent.local import job_series, run_workers
from bench._stack import emit, log

MODELS = {  # module, global batch, steps, report window
    "digits": ("examples.digits.train", 64, 3000, 50),
    "synthetic_cnn": ("examples.synthetic_cnn.train", 128, 40, 5),
}


def median_step_time(model: str, monitor_every: int, *, workers: int) -> float:
    module, batch, steps, window = MODELS[model]
    messages = run_workers(
        workers,
        {
            "batch_size": batch,
            "lr": 0.05,
            "steps": steps,
            "log_every": window,
            "monitor_every": monitor_every,
            "seed": 0,
        },
        module=module,
    )
    times = [
        t for step, t in sorted(job_series(messages[0], "step_time").items()) if step > steps // 5
    ]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="digits,synthetic_cnn", help=f"comma-separated, of {', '.join(MODELS)}"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON lines (the only format)")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    settings = {"none": 0, "gns_interval_1": 1, "gns_interval_8": 8}
    for model in models:
        results: dict[str, list[float]] = {name: [] for name in settings}
        for round_index in range(args.rounds):
            for name, every in settings.items():
                log(f"{model} round {round_index + 1}/{args.rounds}: {name}")
                results[name].append(median_step_time(model, every, workers=args.workers))
        base = statistics.median(results["none"])
        for name, values in results.items():
            median = statistics.median(values)
            emit(
                {
                    "bench": "monitoring",
                    "model": model,
                    "monitor": name,
                    "workers": args.workers,
                    "global_batch": MODELS[model][1],
                    "median_step_s": round(median, 6),
                    "overhead": round(median / base - 1.0, 4),
                    "rounds": json.dumps([round(v, 6) for v in values]),
                }
            )


if __name__ == "__main__":
    main()
