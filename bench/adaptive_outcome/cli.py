"""The command line of ``python -m bench.adaptive_outcome``: parses the arguments, runs one
experiment and prints its rows as JSON lines."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import bench.adaptive_outcome
from bench.adaptive_outcome.batch import (
    BATCH_SYSTEMS,
    experiment_batch,
    goodput_policy,
    parse_systems,
)
from bench.adaptive_outcome.common import log
from bench.adaptive_outcome.interference import INTERFERENCE_SYSTEMS, experiment_interference
from bench.adaptive_outcome.plots import plot
from bench.adaptive_outcome.scaleout import experiment_scaleout
from controlplane.policies import goodput_choice, rules


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(bench.adaptive_outcome.__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--experiment", choices=("batch", "interference", "scaleout"), default="batch"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=120_000, help="training set size")
    parser.add_argument("--label-noise", type=float, default=0.2)
    parser.add_argument("--log-every", type=int, default=5, help="steps between reports")
    parser.add_argument("--json", action="store_true", help="JSON lines only")
    parser.add_argument("--plot", type=Path, help="write PNG plots of this run here")
    batch = parser.add_argument_group("batch")
    batch.add_argument("--batches", default="64,512,4096", help="fixed global batch sizes")
    batch.add_argument("--target", type=float, default=0.80, help="held-out accuracy to reach")
    batch.add_argument("--lr", type=float, default=0.05, help="at batch 64; √-scaled for fixed")
    batch.add_argument("--lr-scaling", default="sqrt,adascale", help="adaptive runs' lr rules")
    batch.add_argument("--max-batch", type=int, default=4096, help="the template's bound")
    batch.add_argument("--cooldown-s", type=float, default=0.0, help="the template's cooldown")
    batch.add_argument("--max-samples", type=int, default=300_000, help="samples per run")
    batch.add_argument("--eval-every", type=int, default=10_000, help="samples between evaluations")
    parser.add_argument(
        "--systems",
        help="batch: which to run: fixed (the --batches), gns (the gns-adaptive-batch "
        "template), goodput (a rule asking optimize_goodput), the adaptive ones once per "
        f"--lr-scaling (default {','.join(BATCH_SYSTEMS)}); interference: the runs per seed: "
        "no_policy, topology_policy (the tree template), reroute_policy (the routed-ring "
        f"template) (default {','.join(INTERFERENCE_SYSTEMS)})",
    )
    batch.add_argument(
        "--goodput-every", type=int, default=20, help="steps between optimize_goodput asks"
    )
    batch.add_argument(
        "--goodput-windows",
        default=str(rules.DEFAULT_WINDOW),
        help="the goodput policy's window (reports), one system per value",
    )
    batch.add_argument(
        "--goodput-max-factor",
        type=float,
        help="how far one optimize_goodput decision may move the batch (the engine's "
        f"GOODPUT_MAX_FACTOR, {goodput_choice.GOODPUT_MAX_FACTOR:g}); set in this process, which "
        "evaluates the policy",
    )
    net = parser.add_argument_group("interference and scaleout")
    net.add_argument("--nodes", type=int, default=4, help="emulated nodes, one worker each")
    net.add_argument("--batch", type=int, default=512, help="global batch")
    net.add_argument("--steps", type=int, default=300)
    net.add_argument("--slow-at", type=int, default=100, help="step at which the path slows")
    net.add_argument("--slow-until", type=int, default=200, help="step at which it recovers")
    net.add_argument("--slow-rate", default="20mbit", help="the slowed path's rate")
    net.add_argument("--slow-path", default="1,2", help="the two nodes whose path slows")
    net.add_argument("--window", type=int, default=2, help="the policy's window (reports)")
    net.add_argument("--for", dest="for_", type=int, default=1, help="the rule's 'for'")
    net.add_argument(
        "--threshold", type=float, default=0.5, help="share of the peak throughput (template: 0.8)"
    )
    net.add_argument("--max-workers", type=int, default=4)
    net.add_argument("--scaleout-s", type=float, default=60, help="the policy run's length")
    args = parser.parse_args()
    if args.systems is None:
        args.systems = ",".join(
            INTERFERENCE_SYSTEMS if args.experiment == "interference" else BATCH_SYSTEMS
        )
    if args.seeds < 1 or args.workers < 1:
        parser.error("--seeds and --workers must be ≥ 1")
    if args.experiment == "batch" and args.workers < 2:
        parser.error("the gradient noise scale needs at least 2 workers")
    try:
        if args.experiment == "batch":
            parse_systems(args.systems)
        for window in args.goodput_windows.split(","):
            goodput_policy(every_steps=1, min_batch=1, max_batch=1, window=int(window))
    except ValueError as exc:
        parser.error(str(exc))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    common = {
        "date": stamp,
        "benchmark": "adaptive_outcome",
        "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start",
        "command": " ".join(
            ["python -m bench.adaptive_outcome --json", *(a for a in sys.argv[1:] if a != "--json")]
        ),
        "workload": f"teacher_student {args.samples} samples, label noise {args.label_noise}",
        "workers": args.workers,
        "target": args.target,
        "seeds": args.seeds,
    }
    if args.experiment == "batch":
        rows = experiment_batch(args, common)
    elif args.experiment == "interference":
        rows = experiment_interference(args, common)
    else:
        rows = experiment_scaleout(args, common)
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.plot:
        for path in plot(rows, args.plot):
            log(f"wrote {path}")
