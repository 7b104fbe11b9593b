"""The batch experiment (KungFu Fig. 4): fixed batches against the GNS template and
``optimize_goodput``, time and samples to the target accuracy."""

from __future__ import annotations

import argparse
import json
import statistics

from bench.adaptive_outcome.common import (
    WORKER,
    log,
    median_or_none,
    spread,
    template_policy,
)
from bench.policy_driver import train
from controlplane.policies import engine, goodput_choice, rules


def summarise_batch_run(trace: list[dict], target: float) -> dict:
    evals = [r for r in trace if "val_accuracy" in r]
    hit = next((r for r in evals if r["val_accuracy"] >= target), None)
    return {
        "seconds_to_target": round(hit["train_s"], 3) if hit else None,
        "samples_to_target": int(hit["samples"]) if hit else None,
        "steps_to_target": hit["step"] if hit else None,
        "final_accuracy": round(evals[-1]["val_accuracy"], 4) if evals else None,
        "final_batch": int(trace[-1]["batch_size"]),
        "samples": int(trace[-1]["samples"]),
        "train_s": round(trace[-1]["train_s"], 3),
        "curve": [
            (int(r["samples"]), round(r["train_s"], 2), round(r["val_accuracy"], 4)) for r in evals
        ],
        "batch_curve": [
            (int(r["samples"]), round(r["train_s"], 2), int(r["batch_size"])) for r in trace
        ],
        # The measured gradient noise scale as training goes (every 10th report).
        "gns_curve": [(int(r["samples"]), round(r["gns"], 1)) for r in trace[::10] if "gns" in r],
    }


# The batch experiment's families of systems (``--systems``).
BATCH_SYSTEMS = ("fixed", "gns", "goodput")


def parse_systems(text: str) -> tuple[str, ...]:
    """``--systems``: a comma-separated subset of BATCH_SYSTEMS, in the order given."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in BATCH_SYSTEMS]
    if unknown or not names:
        raise ValueError(
            f"--systems takes a comma-separated subset of {', '.join(BATCH_SYSTEMS)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    return names


def goodput_policy(
    *, every_steps: int, min_batch: int, max_batch: int, window: int | None = None
) -> rules.Policy:
    """The smallest policy a user would write for ``optimize_goodput`` (no built-in
    template has it): one rule that asks for the best batch every ``every_steps`` steps,
    within the range the fixed batches span. As docs/policies.md shows it, with the
    interval sized for this job (its runs last a few hundred to a few thousand steps);
    ``window`` (reports the engine fits from) is the policy's, the engine's default when
    None."""
    return engine.parse_policy(
        {
            "name": "goodput batch",
            **({"window": window} if window is not None else {}),
            "rules": [
                {
                    "name": "tune batch",
                    "when": f"steps_since_fired >= {every_steps}",
                    "action": {"type": "optimize_goodput"},
                    "bounds": {"min": min_batch, "max": max_batch},
                }
            ],
        }
    )


def experiment_batch(args: argparse.Namespace, common: dict) -> list[dict]:
    batches = sorted(int(b) for b in args.batches.split(","))
    start = batches[0]
    families = parse_systems(args.systems)
    systems: list[tuple[str, int, str, rules.Policy | None, str | None]] = []
    if "fixed" in families:
        systems += [("fixed", b, "none", None, None) for b in batches]
    for rule in args.lr_scaling.split(","):
        if "gns" in families:
            policy = template_policy(
                "gns-adaptive-batch", cooldown_s=args.cooldown_s, max=args.max_batch
            )
            described = f"gns-adaptive-batch (cooldown_s {args.cooldown_s}, max {args.max_batch})"
            systems.append((f"adaptive_{rule}", start, rule, policy, described))
    windows = [int(w) for w in args.goodput_windows.split(",")]
    if args.goodput_max_factor:
        # This process evaluates the policy (as the control plane would): an experiment
        # with the engine's limit on one decision's move.
        goodput_choice.GOODPUT_MAX_FACTOR = args.goodput_max_factor
    for rule in args.lr_scaling.split(","):
        for window in windows if "goodput" in families else []:
            policy = goodput_policy(
                every_steps=args.goodput_every,
                min_batch=start,
                max_batch=args.max_batch,
                window=window,
            )
            described = (
                f"optimize_goodput when steps_since_fired >= {args.goodput_every} "
                f"(bounds {start}–{args.max_batch}, window {window}"
                + (
                    f", max factor {goodput_choice.GOODPUT_MAX_FACTOR:g})"
                    if args.goodput_max_factor
                    else ")"
                )
            )
            name = f"goodput_{rule}" + (
                "" if window == rules.DEFAULT_WINDOW else f"_window{window}"
            )
            systems.append((name, start, rule, policy, described))
    # Seed by seed, every system in turn: the machine's load drifts over an invocation,
    # and running each system's seeds together gave the systems run first (the fixed
    # batches) a different load from the last (18:11 UTC: 4096 twice as slow as at 18:05).
    per_system: list[list[dict]] = [[] for _ in systems]
    for seed in range(args.seeds):
        for index, (system, batch, rule, policy, _) in enumerate(systems):
            hp = {
                "batch_size": batch,
                "lr": args.lr * (batch / 64) ** 0.5,
                "lr_scaling": rule,
                "seed": seed,
                "samples": args.samples,
                "label_noise": args.label_noise,
                "log_every": args.log_every,
                "eval_every_samples": args.eval_every,
                "monitor_every": 1,
            }
            predicted: list[float | None] = []

            def note(firing: rules.Firing, predicted: list = predicted) -> bool:
                predicted.append(firing.inputs.get("predicted_gain"))  # optimize_goodput's
                return False  # sent to the workers as usual

            result = train(
                worker=WORKER,
                hp=hp,
                workers=args.workers,
                policy=policy,
                max_samples=args.max_samples,
                on_firing=note,
            )
            summary = summarise_batch_run(result["trace"], args.target)
            summary["batch_changes"] = [(d["step"], d["value"]) for d in result["decisions"]]
            if any(gain is not None for gain in predicted):
                summary["predicted_gains"] = predicted
            per_system[index].append(summary)
            log(
                f"{system} batch {batch} seed {seed}: "
                + json.dumps({k: v for k, v in summary.items() if "curve" not in k})
            )
    rows = []
    for (system, batch, rule, _, described), runs in zip(systems, per_system, strict=True):
        seconds = [r["seconds_to_target"] for r in runs]
        samples = [r["samples_to_target"] for r in runs]
        rows.append(
            {
                **common,
                "experiment": "batch",
                "system": system,
                "batch": batch,
                "lr": round(args.lr * (batch / 64) ** 0.5, 5),
                "lr_scaling": rule,
                "policy": described,
                "seconds_to_target": median_or_none(seconds),
                "seconds_to_target_range": spread(seconds),
                "samples_to_target": median_or_none(samples),
                "samples_to_target_range": spread(samples),
                "final_accuracy": statistics.median(r["final_accuracy"] for r in runs),
                "final_accuracy_range": spread([r["final_accuracy"] for r in runs]),
                "final_batch": int(statistics.median(r["final_batch"] for r in runs)),
                "per_seed_seconds_to_target": seconds,
                "per_seed_samples_to_target": samples,
                "per_seed_batch_changes": [r["batch_changes"] for r in runs],
                **(
                    {"per_seed_predicted_gains": [r.get("predicted_gains") for r in runs]}
                    if any("predicted_gains" in r for r in runs)
                    else {}
                ),
                "curves": [r["curve"] for r in runs],
                "batch_curves": [r["batch_curve"] for r in runs],
                "gns_curves": [r["gns_curve"] for r in runs],
            }
        )
    fixed = [r for r in rows if r["system"] == "fixed"]
    times = [r["seconds_to_target"] for r in fixed]
    known = [t for t in times if t is not None]
    summary = {
        **common,
        "experiment": "batch",
        "measure": "time to target: fixed spread, and each adaptive run against the fixed",
        "fixed_slowest_over_fastest": round(max(known) / min(known), 2)
        if len(known) >= 2 and len(known) == len(times)
        else None,
        "fixed_best_s": min(known) if known else None,
        "fixed_median_s": median_or_none(times) if times else None,
    }
    for row in rows:
        if row["system"] == "fixed" or row["seconds_to_target"] is None:
            continue
        name = row["system"]
        if summary["fixed_median_s"]:
            summary[f"{name}_saving_vs_median_fixed"] = round(
                1 - row["seconds_to_target"] / summary["fixed_median_s"], 3
            )
        if summary["fixed_best_s"]:
            summary[f"{name}_over_best_fixed"] = round(
                row["seconds_to_target"] / summary["fixed_best_s"], 3
            )
    rows.append(summary)
    return rows
