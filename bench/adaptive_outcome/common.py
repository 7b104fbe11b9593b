"""What every experiment of ``bench.adaptive_outcome`` shares: the workload (``WORKER``, run
by ``bench.policy_driver.train`` with the benchmark playing the control plane), the
templates as a user copies them, the runs' hyper-parameters and medians over seeds."""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from controlplane.policies import engine, rules
from controlplane.policies.templates import TEMPLATES

WORKER = "bench._teacher_student_eval_worker"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def template_policy(template_id: str, **overrides) -> rules.Policy:
    """A built-in template as a user would copy it, with rule fields replaced
    (``cooldown_s``, ``for``, ``bounds``: what a user tunes per job)."""
    document = json.loads(json.dumps(next(t for t in TEMPLATES if t["id"] == template_id)))
    for rule in document["rules"]:
        for key, value in overrides.items():
            if key == "max":
                rule.setdefault("bounds", {})["max"] = value
            else:
                rule[key] = value
    return engine.parse_policy(document)


def median_or_none(values: list) -> float | None:
    """Median over seeds, a run that never reached the target counting as infinitely
    slow; None when that median is infinite (most runs never got there)."""
    median = statistics.median(float("inf") if v is None else v for v in values)
    return None if median == float("inf") else median


def spread(values: list) -> list | None:
    known = [v for v in values if v is not None]
    return [min(known), max(known)] if known else None


def throughput_hyperparameters(args: argparse.Namespace) -> dict:
    """The runs of the interference and scale-out experiments: ``--batch`` with lr scaled
    by √(batch/64), no evaluations (throughput only), the noise monitor every step."""
    return {
        "batch_size": args.batch,
        "lr": args.lr * (args.batch / 64) ** 0.5,
        "seed": 0,
        "samples": args.samples,
        "label_noise": args.label_noise,
        "log_every": args.log_every,
        "eval_every_samples": 10**12,  # no evaluations: throughput only
        "monitor_every": 1,
    }
