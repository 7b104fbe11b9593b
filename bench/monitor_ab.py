"""The gradient-noise monitor's overhead, measured inside one run: ``python -m bench.monitor_ab --json``.

``bench.training --monitor-off-too`` compares two separate runs (ours with the monitor,
ours without), and on a shared machine two runs a minute apart differ by more than the
monitor costs. Here the same worker processes train with the monitor on and off in
alternating segments (on, off, off, on, …; ``bench/_monitor_ab_worker.py``), every
segment a whole number of report windows: each on/off pair of neighbouring segments ran
seconds apart under the same load. Per pair, overhead = 1 − (samples/s with the
monitor) ÷ (samples/s without) from the segments' median window step times; the row
gives the median over pairs, the pairs' spread, and the pooled medians. The monitor runs
at interval 1 (every step) in the "on" segments, as the job default does.

PyTorch runtime only (``examples.digits_torch`` and ``examples.synthetic_cnn_torch``'s
models, data and hyper-parameters as ``bench.training`` uses them). Progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from agent.local import job_series, run_workers
from bench._monitor_ab_worker import monitored
from bench.training import TORCH_MODELS, log


def measure(model: str, workers: int, segments: int, segment_steps: int) -> dict:
    """One run: the window step times of each segment, then the overhead per on/off pair."""
    setup = TORCH_MODELS[model]
    hp = {
        "model": model,
        "batch_size": setup.global_batch,
        "lr": setup.lr,
        "segments": segments,
        "segment_steps": segment_steps,
        "log_every": setup.log_every,
        "seed": 0,
    }
    messages = run_workers(workers, hp, module="bench._monitor_ab_worker", timeout_s=1800)
    by_segment: dict[int, list[float]] = {}
    for step, seconds in sorted(job_series(messages[0], "step_time").items()):
        if step % setup.log_every == 0:  # a whole window, not the partial one a fit ends with
            by_segment.setdefault((step - 1) // segment_steps, []).append(seconds)
    # The first segment (tracing, first allocations) is warm-up: pairs start at 1.
    medians = {s: statistics.median(t) for s, t in by_segment.items() if s >= 1 and t}
    pairs = []
    for first in range(1, segments - 1, 2):
        second = first + 1
        if first in medians and second in medians:
            on, off = (first, second) if monitored(first) else (second, first)
            pairs.append(1 - medians[off] / medians[on])
    if not pairs:
        raise RuntimeError(f"{model}/{workers}: no whole on/off pair measured; raise --segments")
    on_windows = [t for s, ts in by_segment.items() if s >= 1 and monitored(s) for t in ts]
    off_windows = [t for s, ts in by_segment.items() if s >= 1 and not monitored(s) for t in ts]
    on_median, off_median = statistics.median(on_windows), statistics.median(off_windows)
    return {
        "framework": "torch",
        "model": model,
        "workers": workers,
        "global_batch": setup.global_batch,
        "segment_steps": segment_steps,
        "pairs": len(pairs),
        "overhead": round(statistics.median(pairs), 4),
        "overhead_quartiles": [round(q, 4) for q in statistics.quantiles(pairs, n=4)]
        if len(pairs) >= 2
        else [round(pairs[0], 4)] * 3,
        "overhead_pooled": round(1 - off_median / on_median, 4),
        "median_step_s_monitored": round(on_median, 6),
        "median_step_s_unmonitored": round(off_median, 6),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits", help="comma-separated: digits, synthetic_cnn")
    parser.add_argument("--workers", default="2,4", help="comma-separated worker counts (≥ 2)")
    parser.add_argument(
        "--segments", type=int, default=41, help="segments per run (the first is warm-up)"
    )
    parser.add_argument(
        "--segment-steps",
        type=int,
        default=None,
        help="steps per segment, a multiple of the model's report window "
        "(default: 100 for digits, 10 for synthetic_cnn)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    workers = [int(w) for w in args.workers.split(",") if w]
    if any(m not in TORCH_MODELS for m in models):
        parser.error(f"models must be among {', '.join(TORCH_MODELS)}")
    if not workers or min(workers) < 2:
        parser.error("worker counts must be 2 or more (one worker never monitors)")
    if args.segments < 3:
        parser.error("--segments must be at least 3 (a warm-up segment and one on/off pair)")
    rows = []
    started = time.perf_counter()
    for model in models:
        setup = TORCH_MODELS[model]
        segment_steps = args.segment_steps or (100 if model == "digits" else 10)
        if segment_steps % setup.log_every:
            parser.error(
                f"--segment-steps must be a multiple of {model}'s report window ({setup.log_every})"
            )
        for n in workers:
            log(
                f"{model}, {n} workers: {args.segments} segments of {segment_steps} steps "
                f"({time.perf_counter() - started:.0f} s so far)"
            )
            rows.append(measure(model, n, args.segments, segment_steps))
    for row in rows:
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(
                f"{row['model']:<14}{row['workers']:>3} workers  overhead {row['overhead']:+.1%} "
                f"(quartiles {', '.join(f'{q:+.1%}' for q in row['overhead_quartiles'])}; "
                f"pooled {row['overhead_pooled']:+.1%}; {row['pairs']} pairs)"
            )
    log(f"done in {time.perf_counter() - started:.0f} s")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
