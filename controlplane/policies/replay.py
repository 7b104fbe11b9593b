"""Replay a policy over a recorded metric stream (pure; no ORM).

Each tick is one step at which whole-job metrics were recorded. The engine evaluates
every rule at every tick exactly as the live evaluator would, keeping each rule's
hysteresis counter, last firing and ``last_fire`` inputs — but the run itself cannot
change, so the knobs at each tick are the recorded ones.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from controlplane.policies import engine, goodput, goodput_choice, rules


@dataclass
class Tick:
    step: int
    time: float
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Knobs:
    batch_size: int
    lr: float
    workers: int
    strategy: str = "ssgd"
    topology: str = "ring"


def replay(
    policy: rules.Policy,
    ticks: list[Tick],
    *,
    start_time: float,
    defaults: Knobs,
    max_ticks: int = 20_000,
) -> dict[str, Any]:
    stride = max(1, -(-len(ticks) // max_ticks))  # ceil: evaluate at most max_ticks ticks
    latest: dict[str, float] = {}
    peak: dict[str, float] = {}
    recent: dict[str, deque[tuple[int, float]]] = {}
    # optimize_goodput's step times over the run, as the control plane builds them.
    profile = goodput.StepProfile()
    profiled = goodput_choice.uses_profile(policy)
    histories = {rule.name: rules.RuleHistory() for rule in policy.rules}
    fired_at: dict[str, float] = {}
    decisions = []
    evaluations = 0
    for index, tick in enumerate(ticks):
        for name, value in tick.values.items():
            latest[name] = value
            peak[name] = max(value, peak.get(name, value))
            recent.setdefault(name, deque(maxlen=policy.window)).append((tick.step, value))
        if profiled:
            goodput_choice.profile_add(
                profile,
                tick.step,
                tick.values,
                batch_size=int(latest.get("batch_size", defaults.batch_size)),
                workers=int(latest.get("workers", defaults.workers)),
            )
        if index % stride and index != len(ticks) - 1:
            continue
        evaluations += 1
        state = rules.JobState(
            step=tick.step,
            batch_size=int(latest.get("batch_size", defaults.batch_size)),
            lr=float(latest.get("lr", defaults.lr)),
            workers=int(latest.get("workers", defaults.workers)),
            seconds_running=max(0.0, tick.time - start_time),
            metrics=dict(latest),
            peak=dict(peak),
            recent={k: list(v) for k, v in recent.items()},
            profile=tuple(profile.points()) if profiled else (),
            strategy=defaults.strategy,
            topology=defaults.topology,
        )
        for rule in policy.rules:
            history = histories[rule.name]
            if rule.name in fired_at:
                history = rules.RuleHistory(
                    last_fired_step=history.last_fired_step,
                    last_fired_age_s=tick.time - fired_at[rule.name],
                    consecutive_true=history.consecutive_true,
                    last_fire=history.last_fire,
                )
            outcome = engine.evaluate_rule(rule, state, history)
            if outcome.firing is None:
                histories[rule.name] = rules.RuleHistory(
                    last_fired_step=history.last_fired_step,
                    last_fired_age_s=history.last_fired_age_s,
                    consecutive_true=outcome.consecutive_true,
                    last_fire=history.last_fire,
                )
                continue
            fired_at[rule.name] = tick.time
            histories[rule.name] = rules.RuleHistory(
                last_fired_step=tick.step,
                last_fired_age_s=0.0,
                consecutive_true=0,
                last_fire=dict(outcome.firing.inputs),
            )
            decisions.append(
                {
                    "step": tick.step,
                    "time": tick.time,
                    "rule": rule.name,
                    "action": {"type": outcome.firing.action_type, "value": outcome.firing.value},
                    "inputs": outcome.firing.inputs,
                    "dry_run": policy.dry_run,
                }
            )
    return {"ticks": len(ticks), "evaluations": evaluations, "decisions": decisions}
