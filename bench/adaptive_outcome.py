"""Does adaptation pay? KungFu's experiments at small scale: ``python -m bench.adaptive_outcome --json``.

Every run is the teacher–student workload (``examples.teacher_student``: generated data,
label noise) trained by adaptrain's runtime, ``--workers`` processes (native allreduce,
S-SGD, momentum 0.9), through ``bench/_teacher_student_eval_worker.py`` (the example plus
held-out accuracy every ``--eval-every`` samples). This process plays the control plane:
on every whole-job report of rank 0 it evaluates the policy with the product's engine
(``controlplane.policies.engine``, through ``bench.adaptive_batch.PolicyDriver``: latest
values, peaks, windows, hysteresis, cooldown, as the control plane does on ingest) and
writes each firing to every worker's stdin as the same ``command`` line the agent
forwards; the workers apply it together at a step boundary. Nothing is scheduled by the
benchmark: the runs differ only in the policy document.

Experiments (``--experiment``):

- ``batch`` (KungFu Fig. 4): fixed global batches ``--batches`` (lr ``--lr`` at batch 64,
  scaled by √(batch/64)) against the built-in template ``gns-adaptive-batch``, started at
  the smallest batch with lr scaling ``sqrt`` and ``adascale`` (the job's ``lr_scaling``
  hyper-parameter). The template's two numbers a user sets for a job are taken from
  ``--max-batch`` (its bound, 1024 in the template) and ``--cooldown-s`` (20 s in the
  template, sized for long jobs; these runs last seconds). Each run trains on
  ``--max-samples`` samples (then the benchmark sends ``stop``); reported per system: wall
  time (training only: evaluation time taken out) and samples to ``--target`` held-out
  accuracy, final accuracy, medians and min–max over ``--seeds``. Also, started at the
  smallest batch with the same lr rules, the smallest policy a user would write for the
  built-in action ``optimize_goodput`` (no template has it): ask for the batch with the
  best goodput every ``--goodput-every`` steps, within the fixed batches' range; the
  engine fits it from the workers' whole-job ``compute_time``, ``comm_time``,
  ``step_time``, ``batch_size``, ``workers`` and ``gns``, as the control plane does.
  ``--systems`` picks among ``fixed``, ``gns`` and ``goodput``.
- ``interference`` (KungFu Fig. 5): ``--nodes`` emulated nodes (network namespaces,
  ``bench.netns``), one worker each, topology ``ring``; from step ``--slow-at`` to
  ``--slow-until`` the path between the two nodes ``--slow-path`` is cut to
  ``--slow-rate`` (``EmulatedNodes.slow_path``). The same run with no policy and with the
  built-in template ``topology-on-interference`` (its ``window``, ``for`` and share of
  the peak from ``--window``, ``--for`` and ``--threshold``): throughput before, during
  and after, and the share of the lost throughput recovered.
- ``scaleout`` (KungFu Fig. 6): throughput with 1…``--max-workers`` workers at the fixed
  global batch ``--batch``, and where the built-in template ``scale-out-while-efficient``
  (an added worker must add ≥ 50 % of the per-worker throughput) stops adding.

``--plot DIR`` draws PNGs of the rows just measured (needs matplotlib: the ``bench``
extra).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from agent import protocol
from agent.local import peer_list
from bench.adaptive_batch import PolicyDriver
from controlplane.policies import engine
from controlplane.policies.templates import TEMPLATES

ROOT = Path(__file__).resolve().parent.parent
WORKER = "bench._teacher_student_eval_worker"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def template_policy(template_id: str, **overrides) -> engine.Policy:
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


def _drain(stream, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


def train(
    *,
    hp: dict,
    workers: int,
    policy: engine.Policy | None,
    max_samples: int | None = None,
    max_steps: int | None = None,
    timeout_s: float = 600,
    popen: Callable[..., subprocess.Popen] | None = None,
    peers: list[str] | None = None,
    on_report: Callable[[int, dict], None] | None = None,
    on_firing: Callable[[engine.Firing], bool] | None = None,
    topology: str | None = None,
) -> dict:
    """One run of the workload as ``workers`` processes. Rank 0's whole-job reports are
    read as they come; with a policy, each is evaluated and firings are sent as commands
    to every worker. The run is stopped (a ``stop`` command) once ``max_samples`` samples
    or ``max_steps`` steps are reported. ``popen(rank, argv, **kw)`` starts a worker
    elsewhere (an emulated node), ``on_report(step, values)`` sees each report.
    Returns the trace of reports, the decisions and when training started."""
    peers = peers or peer_list(workers)
    popen = popen or (lambda rank, argv, **kw: subprocess.Popen(argv, **kw))
    procs = []
    for rank in range(workers):
        env = {
            **os.environ,
            protocol.ENV_JOB: "1",
            protocol.ENV_RANK: str(rank),
            protocol.ENV_PEERS: ",".join(peers),
            protocol.ENV_PARAMS: json.dumps(
                {"hyperparameters": hp, **({"topology": topology} if topology else {})}
            ),
            protocol.ENV_FIRST_SEQ: "0",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": str(ROOT),
        }
        env.setdefault("COLLECTIVE_TIMEOUT", "60")
        procs.append(
            popen(
                rank,
                [sys.executable, "-m", WORKER],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
        )
    errors: list[list[str]] = [[] for _ in procs]
    drains = [
        threading.Thread(target=_drain, args=(p.stderr, errors[r]), daemon=True)
        for r, p in enumerate(procs)
    ]
    drains += [threading.Thread(target=_drain, args=(p.stdout, []), daemon=True) for p in procs[1:]]
    for t in drains:
        t.start()
    timer = threading.Timer(timeout_s, lambda: [p.kill() for p in procs])
    timer.start()
    driver = (
        PolicyDriver(
            policy,
            batch_size=hp["batch_size"],
            lr=hp["lr"],
            workers=workers,
            topology=topology or "auto",
        )
        if policy
        else None
    )
    trace: list[dict] = []
    routes: list[dict] = []
    applied: list[dict] = []
    started = None
    seq = 0
    stopping = False

    def send(action: str, value=None) -> None:
        nonlocal seq
        seq += 1
        command = {"type": "command", "id": seq, "seq": seq, "action": action, "payload": {}}
        if value is not None:
            command["payload"]["value"] = value
        for proc in procs:
            try:
                proc.stdin.write(json.dumps(command) + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    try:
        for line in procs[0].stdout:
            if not line.startswith(protocol.PREFIX):
                continue
            message = json.loads(line[len(protocol.PREFIX) :])
            if message.get("type") == "applied":
                applied.append({"seq": message["seq"], "step": message["step"]})
            if message.get("type") != "metrics":
                continue
            points = message["points"]
            if started is None and any(
                p["name"] == "batch_size" and p["step"] == 0 for p in points
            ):
                started = points[0]["time"]  # the runtime's report just before the first step
            values = {p["name"]: p["value"] for p in points if "rank" not in p}
            if "ring_hop_mbps" in values:  # routed_ring probed its paths (agent.runtime.routing)
                routes.append({"step": points[0]["step"], **values})
            if "loss" not in values or stopping:
                continue
            step, now = points[0]["step"], points[0]["time"]
            # Training time from the end of the first step (see the worker), evaluations out.
            clock = values.get("clock_start") or started or now
            values["train_s"] = now - clock - values.get("eval_s", 0.0)
            trace.append({"step": step, "time": now, **values})
            if on_report is not None:
                on_report(step, values)
            if driver is not None:
                for firing in driver.observe(step, now, started or now, values):
                    if on_firing is not None and on_firing(firing):
                        continue  # carried out by the caller (a resize, as the agents do)
                    send(firing.action_type, firing.value)
                    if firing.action_type == "set_topology":
                        driver.topology = firing.value
                    elif firing.action_type == "set_strategy":
                        driver.strategy = firing.value
            if (max_samples and values.get("samples", 0) >= max_samples) or (
                max_steps and step >= max_steps
            ):
                send("stop")
                stopping = True
        for rank, proc in enumerate(procs):
            proc.stdin.close()
            if proc.wait() != 0:
                raise RuntimeError(
                    f"worker {rank} exited with {proc.returncode}:\n{''.join(errors[rank])[-3000:]}"
                )
    finally:
        timer.cancel()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    decisions = driver.decisions if driver else []
    for number, decision in enumerate(decisions, start=1):
        # Commands are numbered in the order sent; the policy's come first, then the stop.
        decision["applied_step"] = next((a["step"] for a in applied if a["seq"] == number), None)
    return {"trace": trace, "decisions": decisions, "routes": routes}


# -- experiment: adaptive batch vs fixed (KungFu Fig. 4) ---------------------------------


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


def median_or_none(values: list) -> float | None:
    """Median over seeds, a run that never reached the target counting as infinitely
    slow; None when that median is infinite (most runs never got there)."""
    median = statistics.median(float("inf") if v is None else v for v in values)
    return None if median == float("inf") else median


def spread(values: list) -> list | None:
    known = [v for v in values if v is not None]
    return [min(known), max(known)] if known else None


# The interference experiment's runs per seed (``--systems`` there).
INTERFERENCE_SYSTEMS = ("no_policy", "topology_policy", "reroute_policy")
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
) -> engine.Policy:
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
    systems: list[tuple[str, int, str, engine.Policy | None, str | None]] = []
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
                f"(bounds {start}–{args.max_batch}, window {window})"
            )
            name = f"goodput_{rule}" + (
                "" if window == engine.DEFAULT_WINDOW else f"_window{window}"
            )
            systems.append((name, start, rule, policy, described))
    rows = []
    for system, batch, rule, policy, described in systems:
        runs = []
        for seed in range(args.seeds):
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

            def note(firing: engine.Firing, predicted: list = predicted) -> bool:
                predicted.append(firing.inputs.get("predicted_gain"))  # optimize_goodput's
                return False  # sent to the workers as usual

            result = train(
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
            runs.append(summary)
            log(
                f"{system} batch {batch} seed {seed}: "
                + json.dumps({k: v for k, v in summary.items() if "curve" not in k})
            )
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


# -- experiment: interference (KungFu Fig. 5) -------------------------------------------


def phase_median(trace: list[dict], lo: int, hi: int) -> float | None:
    values = [r["throughput"] for r in trace if lo <= r["step"] < hi]
    return round(statistics.median(values), 1) if values else None


def experiment_interference(args: argparse.Namespace, common: dict) -> list[dict]:
    from bench.netns import EmulatedNodes

    a, b = (int(n) for n in args.slow_path.split(","))
    if not (0 <= a < args.nodes and 0 <= b < args.nodes and a != b):
        raise SystemExit("--slow-path names two different nodes below --nodes")
    if not 0 < args.slow_at < args.slow_until < args.steps:
        raise SystemExit("need 0 < --slow-at < --slow-until < --steps")
    hp = {
        "batch_size": args.batch,
        "lr": args.lr * (args.batch / 64) ** 0.5,
        "seed": 0,
        "samples": args.samples,
        "label_noise": args.label_noise,
        "log_every": args.log_every,
        "eval_every_samples": 10**12,  # no evaluations: throughput only
        "monitor_every": 1,
    }
    common = {**common, "workers": args.nodes}
    rows = []
    # The systems: no policy, and each template that reacts (its id), with the same fields set.
    templates = {
        "topology_policy": "topology-on-interference",
        "reroute_policy": "reroute-on-interference",
    }
    systems = ["no_policy", *(s for s in args.systems.split(",") if s != "no_policy")]
    unknown = [s for s in systems[1:] if s not in templates]
    if unknown:
        raise SystemExit(f"--systems: unknown {unknown}; use no_policy and {sorted(templates)}")
    per_system: dict[str, list[dict]] = {system: [] for system in systems}
    with EmulatedNodes(args.nodes) as nodes:
        peers = [f"{nodes.address(i)}:{29500 + i}" for i in range(args.nodes)]

        def popen(rank, argv, **kw):
            kw.pop("text", None)
            return nodes.popen(rank, argv, **kw)

        for seed in range(args.seeds):
            for system in per_system:
                policy = None
                if system in templates:
                    document = json.loads(
                        json.dumps(next(t for t in TEMPLATES if t["id"] == templates[system]))
                    )
                    document["window"] = args.window
                    for rule in document["rules"]:
                        rule["for"] = args.for_
                        # The share of the peak that counts as interference: the
                        # template's 0.8, or what --threshold says.
                        assert "0.8 * peak.throughput" in rule["when"]
                        rule["when"] = rule["when"].replace(
                            "0.8 * peak.throughput", f"{args.threshold} * peak.throughput"
                        )
                    policy = engine.parse_policy(document)
                state = {"slowed": False, "cleared": False}

                def on_report(step: int, values: dict, state=state) -> None:
                    if step >= args.slow_at and not state["slowed"]:
                        nodes.slow_path(a, b, args.slow_rate)
                        state["slowed"] = True
                    if step >= args.slow_until and not state["cleared"]:
                        nodes.clear_path(a, b)
                        state["cleared"] = True

                try:
                    result = train(
                        hp={**hp, "seed": seed},
                        workers=args.nodes,
                        policy=policy,
                        max_steps=args.steps,
                        popen=popen,
                        peers=peers,
                        on_report=on_report,
                        topology="ring",
                    )
                finally:
                    if state["slowed"] and not state["cleared"]:
                        nodes.clear_path(a, b)
                trace = result["trace"]
                before = phase_median(trace, max(1, args.slow_at - 50), args.slow_at)
                visible = next(
                    (
                        r["step"]
                        for r in trace
                        if r["step"] >= args.slow_at and r["throughput"] < 0.8 * (before or 0)
                    ),
                    None,
                )
                decisions = result["decisions"]
                # The first decision applied once the path is slow (one before it, fired on
                # noise, does not count as a reaction).
                reacted = next(
                    (
                        d["applied_step"]
                        for d in decisions
                        if d["applied_step"] and d["applied_step"] >= args.slow_at
                    ),
                    None,
                )
                run = {
                    "seed": seed,
                    "before": before,
                    "during": phase_median(
                        trace, args.slow_at + args.log_every + 1, args.slow_until
                    ),
                    "during_from_visible_plus_10": phase_median(
                        trace, (visible or args.slow_at) + 10, args.slow_until
                    ),
                    "after": phase_median(
                        trace, args.slow_until + args.log_every + 1, args.steps + 1
                    ),
                    "visible_step": visible,
                    "decisions": [(d["step"], d["value"], d["applied_step"]) for d in decisions],
                    "reacted_step": reacted,
                    "routes": [
                        {
                            k: round(v, 1)
                            for k, v in r.items()
                            if k in ("step", "ring_hop_mbps", "link_mbps_min")
                        }
                        for r in result["routes"]
                    ],
                    "series": [(r["step"], round(r["throughput"], 1)) for r in trace],
                }
                log(
                    f"{system} seed {seed}: "
                    + json.dumps({k: v for k, v in run.items() if k != "series"})
                )
                per_system[system].append(run)
    for system, runs in per_system.items():
        rows.append(
            {
                **common,
                "experiment": "interference",
                "system": system,
                "nodes": args.nodes,
                "batch": args.batch,
                "topology": "ring",
                "slow_path": [a, b],
                "slow_rate": args.slow_rate,
                "slow_at": args.slow_at,
                "slow_until": args.slow_until,
                "policy": None
                if system == "no_policy"
                else f"{templates[system]} (window {args.window}, for {args.for_}, "
                f"threshold {args.threshold} of the peak)",
                **{
                    key: statistics.median(r[key] for r in runs if r[key] is not None)
                    if any(r[key] is not None for r in runs)
                    else None
                    for key in ("before", "during", "during_from_visible_plus_10", "after")
                },
                "per_seed": [{k: v for k, v in r.items() if k != "series"} for r in runs],
                "series": runs[0]["series"],
                "decisions": [(d[2] or d[0], d[1]) for d in runs[0]["decisions"]],
            }
        )
    base = per_system["no_policy"]
    for system in systems[1:]:
        pol = per_system[system]
        recovered = []
        for plain, adapted in zip(base, pol, strict=True):
            lost = adapted["before"] - plain["during"]
            got = (adapted["during_from_visible_plus_10"] or 0) - plain["during"]
            recovered.append(round(got / lost, 3) if lost > 0 else None)
        steps = [
            r["reacted_step"] - r["visible_step"]
            for r in pol
            if r["reacted_step"] is not None and r["visible_step"] is not None
        ]
        rows.append(
            {
                **common,
                "experiment": "interference",
                "system": system,
                "measure": "share of the lost throughput recovered from 10 steps after the "
                "slowdown is visible (policy run's throughput then, against the same seed's "
                "run without the policy during the slowdown, over its loss)",
                "recovered_share_per_seed": recovered,
                "recovered_share": statistics.median(r for r in recovered if r is not None)
                if any(r is not None for r in recovered)
                else None,
                "steps_visible_to_switch_per_seed": steps,
            }
        )
    return rows


def steady_throughput(trace: list[dict], skip: int = 10) -> float | None:
    values = [r["throughput"] for r in trace[skip:]]
    return round(statistics.median(values), 1) if values else None


def experiment_scaleout(args: argparse.Namespace, common: dict) -> list[dict]:
    """Throughput at a fixed global batch with 1…max workers (separate runs), then one
    run that starts with one worker and grows while the template says it pays."""
    from agent.local import LocalJob

    hp = {
        "batch_size": args.batch,
        "lr": args.lr * (args.batch / 64) ** 0.5,
        "seed": 0,
        "samples": args.samples,
        "label_noise": args.label_noise,
        "log_every": args.log_every,
        "eval_every_samples": 10**12,
        "monitor_every": 1,
    }
    common = {key: value for key, value in common.items() if key != "workers"}
    rows = []
    single = None
    for workers in range(1, args.max_workers + 1):
        runs = [
            steady_throughput(
                train(hp={**hp, "seed": seed}, workers=workers, policy=None, max_steps=args.steps)[
                    "trace"
                ]
            )
            for seed in range(args.seeds)
        ]
        throughput = statistics.median(runs)
        single = single or throughput
        rows.append(
            {
                **common,
                "experiment": "scaleout",
                "system": "fixed workers",
                "workers": workers,
                "batch": args.batch,
                "throughput": throughput,
                "throughput_per_seed": runs,
                "efficiency": round(throughput / (workers * single), 3),
                "speedup": round(throughput / single, 3),
            }
        )
        log(f"scaleout {workers} workers: {rows[-1]['throughput']} samples/s")
    policy = template_policy(
        "scale-out-while-efficient", cooldown_s=args.cooldown_s, max=args.max_workers
    )
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
                log(f"scaleout policy: grow to {firing.value} at step {step}")
                job.grow(add)  # as the agents carry out scale_workers: warm standby, new version
                driver.workers = int(firing.value)
        job.command("stop")
        job.wait(timeout_s=120)
    final = driver.workers
    at = {r["workers"]: r for r in rows}
    rows.append(
        {
            **common,
            "experiment": "scaleout",
            "system": "scale-out-while-efficient",
            "policy": f"scale-out-while-efficient (cooldown_s {args.cooldown_s}, "
            f"max {args.max_workers})",
            "policy_stops_at": final,
            "growths": growths,
            "series": series,
            "efficiency_at_stop": at[final]["efficiency"] if final in at else None,
            "efficiency_one_more": at[final + 1]["efficiency"] if final + 1 in at else None,
        }
    )
    return rows


# -- plots -------------------------------------------------------------------------------


def plot(rows: list[dict], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    batch_rows = [r for r in rows if r.get("experiment") == "batch" and "system" in r]
    if batch_rows:
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
        for row in batch_rows:
            label = (
                f"fixed {row['batch']}"
                if row["system"] == "fixed"
                else row["system"].replace("_", " ")
            )
            curve = row["curves"][0]
            line = ax1.plot([c[1] for c in curve], [c[2] for c in curve], label=label)[0]
            for other in row["curves"][1:]:
                ax1.plot(
                    [c[1] for c in other], [c[2] for c in other], color=line.get_color(), alpha=0.3
                )
            if row["system"] != "fixed":
                bc = row["batch_curves"][0]
                ax2.step([c[1] for c in bc], [c[2] for c in bc], where="post", label=label)
        target = batch_rows[0]["target"]
        ax1.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax1.set_xscale("log")
        ax1.set_xlabel("training seconds (log)")
        ax1.set_ylabel("held-out accuracy")
        ax1.set_ylim(max(0.5, ax1.get_ylim()[0]), None)
        ax1.set_title("time to accuracy (seed 0 bold, others faint)")
        ax1.legend(fontsize=8)
        ax2.set_yscale("log", base=2)
        ax2.set_xlabel("training seconds")
        ax2.set_ylabel("global batch (policy's choice)")
        ax2.set_title("batch chosen by the policy (seed 0)")
        ax2.legend(fontsize=8)
        for row in batch_rows:
            if row["system"] == "fixed" and row.get("gns_curves"):
                gc = row["gns_curves"][0]
                ax3.plot([c[0] for c in gc], [c[1] for c in gc], label=f"fixed {row['batch']}")
        ax3.set_yscale("log")
        ax3.set_xlabel("samples trained on")
        ax3.set_ylabel("gradient noise scale (runtime's estimate)")
        ax3.set_title("the noise scale grows as it trains (seed 0)")
        ax3.legend(fontsize=8)
        fig.tight_layout()
        path = directory / "adaptive_batch.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    inter = [r for r in rows if r.get("experiment") == "interference" and "series" in r]
    if inter:
        fig, ax = plt.subplots(figsize=(8, 4))
        for row in inter:
            series = row["series"]
            line = ax.plot([s[0] for s in series], [s[1] for s in series], label=row["system"])[0]
            for step, _ in row.get("decisions", []):
                ax.axvline(step, linestyle="--", linewidth=1, color=line.get_color())
        ax.axvline(inter[0]["slow_at"], color="red", linewidth=1, label="path slowed")
        ax.axvline(inter[0]["slow_until"], color="red", linestyle=":", linewidth=1,
                   label="path restored")  # fmt: skip
        ax.set_xlabel("step")
        ax.set_ylabel("throughput (samples/s)")
        ax.set_title("the path between two workers slowed mid-run (seed 0; dashed: decisions)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = directory / "adaptive_interference.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    scale = [r for r in rows if r.get("experiment") == "scaleout" and "workers" in r]
    if scale:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["workers"] for r in scale]
        ax.plot(xs, [r["throughput"] for r in scale], marker="o", label="throughput")
        ax.set_xlabel("workers")
        ax.set_ylabel("samples/s")
        ax2 = ax.twinx()
        ax2.plot(xs, [r["efficiency"] for r in scale], marker="s", color="C1", label="efficiency")
        ax2.set_ylabel("efficiency (per-worker vs 1 worker)")
        stop = next(
            (r for r in rows if r.get("experiment") == "scaleout" and "policy_stops_at" in r), None
        )
        if stop and stop["policy_stops_at"]:
            ax.axvline(stop["policy_stops_at"], color="grey", linestyle="--", label="policy stops")
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        path = directory / "adaptive_scaleout.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        default=str(engine.DEFAULT_WINDOW),
        help="the goodput policy's window (reports), one system per value",
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


if __name__ == "__main__":
    main()
