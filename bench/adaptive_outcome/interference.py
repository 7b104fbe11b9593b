"""The interference experiment (KungFu Fig. 5): one path slowed mid-run on emulated nodes,
throughput before, during and after, with and without the topology templates."""

from __future__ import annotations

import argparse
import json
import statistics

from bench.adaptive_outcome.common import (
    WORKER,
    log,
    throughput_hyperparameters,
)
from bench.policy_driver import train
from controlplane.policies import engine
from controlplane.policies.templates import TEMPLATES

# The interference experiment's runs per seed (``--systems`` there).
INTERFERENCE_SYSTEMS = ("no_policy", "topology_policy", "reroute_policy")


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
    hp = throughput_hyperparameters(args)
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
                        worker=WORKER,
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
