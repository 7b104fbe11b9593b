"""A parsed policy and what the engine reads and returns, as frozen dataclasses.

The policy engine (``engine``) parses a policy document into :class:`Policy` and evaluates
its rules against a :class:`JobState` and each rule's :class:`RuleHistory`, one
:class:`RuleOutcome` per rule; the optimize_goodput decision (``goodput_choice``), replay,
the services and the benchmarks build and read the same types. Pure data: no ORM, no CEL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controlplane.policies import goodput

# Aggregates over each metric's last ``window`` reported values (a policy-level setting).
DEFAULT_WINDOW = 10


@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    action_type: str
    value: str | None
    for_evaluations: int = 1
    cooldown_s: float = 0.0
    bound_min: float | None = None
    bound_max: float | None = None
    max_per_hour: int | None = None
    requires_approval: bool = False
    enabled: bool = True


@dataclass(frozen=True)
class Policy:
    name: str
    rules: tuple[Rule, ...]
    dry_run: bool = False
    window: int = DEFAULT_WINDOW


@dataclass(frozen=True)
class RuleHistory:
    """What the engine needs to know about a rule's past on one job."""

    last_fired_step: int | None = None
    last_fired_age_s: float | None = None
    consecutive_true: int = 0
    last_fire: dict[str, Any] = field(default_factory=dict)
    fired_last_hour: int = 0


@dataclass(frozen=True)
class JobState:
    step: int
    batch_size: int
    lr: float
    workers: int
    seconds_running: float
    metrics: dict[str, float] = field(default_factory=dict)
    strategy: str = "ssgd"
    topology: str = "ring"
    peak: dict[str, float] = field(default_factory=dict)
    # name → the last ``window`` (step, value) pairs, oldest first
    recent: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    # The run's step times per configuration (``step_profile``), what optimize_goodput fits
    # when given; without it, it fits the window's (``goodput_samples``).
    profile: tuple[goodput.ProfilePoint, ...] = ()


@dataclass(frozen=True)
class Firing:
    """One rule whose condition held: the action it asks for and the inputs it saw."""

    rule: str
    action_type: str
    value: Any
    inputs: dict[str, Any]


@dataclass(frozen=True)
class RuleOutcome:
    rule: str
    condition: bool
    firing: Firing | None
    consecutive_true: int
