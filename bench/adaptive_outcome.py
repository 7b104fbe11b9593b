"""Does the batch size matter on the teacher–student workload? ``python -m bench.adaptive_outcome --json``.

The first part of issue 19's KungFu experiments: time to a target accuracy with fixed
small, medium and large batches on ``examples.teacher_student`` (generated data, label
noise), one process, TensorFlow on the CPU, the learning rate scaled by √(batch / 64)
from ``--lr`` (the variance-preserving rule). Training time only: the periodic
evaluation on the held-out set is not counted. Prints one JSON line per batch size with
the median over ``--seeds`` of the wall time (and the process's CPU time, steadier on a
shared machine) and samples to ``--target`` accuracy (null
for a run that did not reach it within ``--max-samples``), each seed's figures, the final
accuracy, and a line with the ratio of the slowest to the fastest.

Not yet here: the adaptive (GNS-driven) run through the runtime, the interference and
the scale-out experiments.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from examples.teacher_student.data import make_data  # noqa: E402


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(batch: int, *, seed: int, args: argparse.Namespace) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    (x, y), (x_test, y_test) = make_data(args.samples, label_noise=args.label_noise, seed=seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(x.shape[1],)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    lr = args.lr * (batch / 64) ** 0.5
    optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        optimizer.apply_gradients(
            zip(
                tape.gradient(loss, model.trainable_variables),
                model.trainable_variables,
                strict=True,
            )
        )
        return loss

    x_t, y_t = tf.constant(x), tf.constant(y)
    rng = np.random.default_rng(seed)
    seen, trained_s, reached_s, reached_samples, accuracy = 0, 0.0, None, None, 0.0
    cpu_s, reached_cpu_s, curve = 0.0, None, []
    next_eval = args.eval_every
    order = rng.permutation(len(x))
    cursor = 0
    step(x_t[:batch], y_t[:batch])  # trace once, outside the clock
    while seen < args.max_samples:
        if cursor + batch > len(order):
            order, cursor = rng.permutation(len(x)), 0
        index = tf.constant(order[cursor : cursor + batch])
        cursor += batch
        start, start_cpu = time.perf_counter(), time.process_time()
        step(tf.gather(x_t, index), tf.gather(y_t, index))
        trained_s += time.perf_counter() - start
        cpu_s += time.process_time() - start_cpu
        seen += batch
        if seen >= next_eval:
            next_eval += args.eval_every
            logits = model(x_test, training=False)
            accuracy = float(np.mean(np.argmax(logits.numpy(), axis=1) == y_test))
            curve.append((seen, round(trained_s, 2), round(accuracy, 4)))
            if accuracy >= args.target and reached_s is None:
                reached_s, reached_samples, reached_cpu_s = trained_s, seen, cpu_s
                if not args.to_budget:
                    break
    return {
        "seconds_to_target": None if reached_s is None else round(reached_s, 3),
        "cpu_seconds_to_target": None if reached_cpu_s is None else round(reached_cpu_s, 3),
        "curve": curve,
        "samples_to_target": reached_samples,
        "final_accuracy": round(accuracy, 4),
        "samples": seen,
        "lr": round(lr, 5),
    }


def median_or_none(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if len(known) == len(values) and known else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batches", default="32,256,2048", help="fixed batch sizes, comma-separated"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=120_000, help="training set size")
    parser.add_argument("--label-noise", type=float, default=0.2)
    parser.add_argument("--target", type=float, default=0.85, help="held-out accuracy to reach")
    parser.add_argument("--lr", type=float, default=0.02, help="at batch 64; √-scaled")
    parser.add_argument("--max-samples", type=int, default=3_000_000)
    parser.add_argument("--eval-every", type=int, default=8192, help="samples between evaluations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--to-budget", action="store_true", help="train on after the target")
    parser.add_argument("--json", action="store_true", help="JSON lines only")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if any(b < 1 for b in batches) or args.seeds < 1:
        parser.error("batch sizes and --seeds must be ≥ 1")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    common = {
        "date": stamp,
        "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start",
        "command": " ".join(
            ["python -m bench.adaptive_outcome --json", *(a for a in sys.argv[1:] if a != "--json")]
        ),
        "benchmark": "adaptive_outcome",
        "workload": f"teacher_student {args.samples} samples, label noise {args.label_noise}",
        "target": args.target,
        "threads": args.threads,
    }
    rows = []
    for batch in batches:
        runs = []
        for seed in range(args.seeds):
            runs.append(run(batch, seed=seed, args=args))
            log(f"batch {batch} seed {seed}: {runs[-1]}")
        rows.append(
            {
                **common,
                "system": "fixed",
                "batch": batch,
                "seconds_to_target": median_or_none([r["seconds_to_target"] for r in runs]),
                "samples_to_target": median_or_none([r["samples_to_target"] for r in runs]),
                "final_accuracy": statistics.median(r["final_accuracy"] for r in runs),
                "per_seed_seconds_to_target": [r["seconds_to_target"] for r in runs],
                "per_seed_samples_to_target": [r["samples_to_target"] for r in runs],
                "cpu_seconds_to_target": median_or_none([r["cpu_seconds_to_target"] for r in runs]),
                "curves": [r["curve"] for r in runs],
                "lr": runs[0]["lr"],
            }
        )
    times = [r["seconds_to_target"] for r in rows if r["seconds_to_target"] is not None]
    rows.append(
        {
            **common,
            "measure": "slowest / fastest fixed batch to the target (runs that reached it)",
            "ratio": round(max(times) / min(times), 2) if len(times) >= 2 else None,
            "reached": [r["batch"] for r in rows if r["seconds_to_target"] is not None],
        }
    )
    for row in rows:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
