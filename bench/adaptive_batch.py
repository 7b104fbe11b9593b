"""Time and steps to 95 % test accuracy on digits, GNS-adaptive vs fixed batch: ``python -m bench.adaptive_batch --json``.

Every run is the digits example (``bench/_digits_eval_worker.py``: the example plus a
test-set evaluation in each report) with 2 workers on loopback, our runtime and
native allreduce, SGD with momentum 0.9 and the same learning rate throughout.

- ``fixed``: one run per batch size in ``--batches`` (default 16, 64, 256).
- ``adaptive_gns``: starts at the smallest batch. This process plays the control
  plane: on every whole-job report of rank 0 it evaluates the built-in template
  ``gns-adaptive-batch`` with the policy engine (``controlplane.policies.engine``,
  pure, no database) exactly as replay does, and when the rule fires it writes a
  ``set_batch_size`` command to every worker's stdin; the workers apply it together at
  a step boundary. The template's ``cooldown_s`` (20 s, sized for real jobs whose
  metrics reach the control plane every few seconds) is longer than a whole digits
  run, so it is replaced by ``--cooldown-s`` (default 0); its ``for: 3`` hysteresis
  and its bound of 1024 stay.

Each (system, batch) runs with ``--seeds`` seeds (data split, initial weights and batch
order differ); a line reports the medians. ``steps_to_95`` is the first reported step
at which the test accuracy is ≥ 0.95 (reports every ``--log-every`` steps), and
``seconds_to_95`` the training time to it, from the first step, without the time
spent on test evaluations; both are null when a run never gets there (a median over
seeds is null when most runs never get there). ``final_accuracy`` is the test accuracy
after ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from bench.policy_driver import train
from controlplane.policies import engine, rules
from controlplane.policies.templates import TEMPLATES

WORKER = "bench._digits_eval_worker"
TARGET = 0.95
TEMPLATE_ID = "gns-adaptive-batch"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def gns_policy(cooldown_s: float) -> rules.Policy:
    document = json.loads(json.dumps(next(t for t in TEMPLATES if t["id"] == TEMPLATE_ID)))
    for rule in document["rules"]:
        rule["cooldown_s"] = cooldown_s
    return engine.parse_policy(document)


def run(
    *,
    batch: int,
    lr: float,
    steps: int,
    log_every: int,
    seed: int,
    workers: int,
    policy: rules.Policy | None,
    timeout_s: float,
) -> dict:
    """One training run; rank 0's reports are read as they come and, with a policy,
    answered with commands. Returns the per-report trace, when training started and the
    policy's decisions."""
    hp = {
        "batch_size": batch,
        "lr": lr,
        "steps": steps,
        "log_every": log_every,
        "seed": seed,
        "monitor_every": 1,
    }
    return train(worker=WORKER, hp=hp, workers=workers, policy=policy, timeout_s=timeout_s)


def summarise(result: dict) -> dict:
    trace, started = result["trace"], result["started"]
    hit = next((r for r in trace if r["test_accuracy"] >= TARGET), None)
    return {
        "steps_to_95": hit["step"] if hit else None,
        "seconds_to_95": round(hit["time"] - started - hit["eval_s"], 3) if hit else None,
        "samples_to_95": (sum_samples(trace, hit["step"])) if hit else None,
        "final_accuracy": round(trace[-1]["test_accuracy"], 4),
        "final_batch": int(trace[-1]["batch_size"]),
    }


def sum_samples(trace: list[dict], until_step: int) -> int:
    """Samples seen up to ``until_step``, from the batch size reported in each window
    (a change lands within a window, so this is exact to within one window)."""
    total, previous = 0, 0
    for r in trace:
        if r["step"] > until_step:
            break
        total += (r["step"] - previous) * int(r["batch_size"])
        previous = r["step"]
    return total


def median_or_none(values: list) -> float | None:
    """Median over seeds, counting a run that never reached the target as infinitely
    slow; None when that median is infinite (most runs never got there)."""
    median = statistics.median(float("inf") if v is None else v for v in values)
    return None if median == float("inf") else median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batches",
        default="16,64,256",
        help="fixed global batch sizes; the smallest starts adaptive",
    )
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--cooldown-s", type=float, default=0.0, help="replaces the template's 20 s cooldown"
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.workers < 2:
        parser.error("the gradient noise scale needs at least 2 workers")
    runs = [("fixed", b) for b in batches] + [("adaptive_gns", min(batches))]
    rows = []
    for system, batch in runs:
        per_seed = []
        for seed in seeds:
            log(f"{system} batch {batch} seed {seed}")
            policy = gns_policy(args.cooldown_s) if system == "adaptive_gns" else None
            result = run(
                batch=batch,
                lr=args.lr,
                steps=args.steps,
                log_every=args.log_every,
                seed=seed,
                workers=args.workers,
                policy=policy,
                timeout_s=900,
            )
            summary = summarise(result)
            if result["decisions"]:
                summary["batch_changes"] = [(d["step"], d["value"]) for d in result["decisions"]]
            log(f"  {json.dumps(summary)}")
            per_seed.append(summary)
        steps_med = median_or_none([s["steps_to_95"] for s in per_seed])
        row = {
            "system": system,
            "batch": batch,
            "steps_to_95": int(steps_med) if steps_med is not None else None,
            "seconds_to_95": median_or_none([s["seconds_to_95"] for s in per_seed]),
            "final_accuracy": round(statistics.median(s["final_accuracy"] for s in per_seed), 4),
            "samples_to_95": median_or_none([s["samples_to_95"] for s in per_seed]),
            "final_batch": int(statistics.median(s["final_batch"] for s in per_seed)),
            "workers": args.workers,
            "lr": args.lr,
            "seeds": len(seeds),
            "runs": per_seed,
        }
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        print(
            f"{'system':<14}{'batch':>6}{'steps→95':>10}{'s→95':>9}{'samples→95':>12}{'final acc':>11}{'final batch':>13}"
        )
        for r in rows:

            def show(v, fmt):
                return "never" if v is None else format(v, fmt)

            print(
                f"{r['system']:<14}{r['batch']:>6}{show(r['steps_to_95'], 'd'):>10}"
                f"{show(r['seconds_to_95'], '.2f'):>9}{show(r['samples_to_95'], '.0f'):>12}"
                f"{r['final_accuracy']:>11.4f}{r['final_batch']:>13}"
            )


if __name__ == "__main__":
    main()
