"""Policy evaluation: a pure function from (policy, job state, rule history) to actions.

No ORM here, so it is tested without a database and reused for replay. A policy is
data (JSON) whose conditions and action values are CEL expressions evaluated by
``cel-python``; nothing in a policy is ever run as Python.

CEL variables available to a rule: the job's knobs (``step``, ``batch_size``, ``lr``,
``workers``, ``strategy``, ``topology``), the latest value of every reported whole-job
metric by name (``loss``, ``accuracy``, ``throughput``, ``gns``, … — a name not
reported yet is absent), the maps ``metrics`` (the same values) and ``peak`` (each
metric's highest value so far), ``window_mean`` / ``window_min`` / ``window_max`` /
``slope`` (over each metric's last ``window`` values; ``window`` is a policy setting,
default 10; slope is the least-squares change per step), and for the rule itself ``steps_since_fired`` /
``seconds_since_fired`` (counted from the job's start when it never fired) and the map
``last_fire`` of the scalar inputs it saw when it last fired (empty if never; test with
``has(last_fire.throughput)``).

Besides the actions a user may command, a rule may ask ``optimize_goodput``: the engine
works out the batch with the highest goodput for the job's current workers from its
step times (over the run, per configuration, when the caller gives ``JobState.profile``)
and recent noise scale (``goodput_choice.py``, on ``goodput.py``'s model) and fires a
``set_batch_size``. The types it reads and returns are in ``rules.py``.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from agent.protocol import vocabulary
from controlplane.policies.goodput_choice import goodput_choice
from controlplane.policies.rules import (
    DEFAULT_WINDOW,
    Firing,
    JobState,
    Policy,
    Rule,
    RuleHistory,
    RuleOutcome,
)

# Actions and metric names come from the vocabulary agents and workers share.
ACTION_TYPES = tuple(vocabulary.ACTIONS)
# What a rule may ask: the actions, and the ones the engine turns into an action itself.
POLICY_ACTION_TYPES = tuple(vocabulary.POLICY_ACTIONS)
NUMERIC_ACTIONS: dict[str, type[int] | type[float]] = {
    name: kind for name, kind in vocabulary.ACTION_VALUES.items() if kind in (int, float)
}
CHOICE_ACTIONS: dict[str, tuple[str, ...]] = {
    name: tuple(kind)
    for name, kind in vocabulary.ACTION_VALUES.items()
    if isinstance(kind, vocabulary.Terms)
}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Names a CEL expression may use directly. A metric of the user's own is read through
# the map: metrics.my_metric (or has(metrics.my_metric) to test for it).
CONTEXT_NAMES = frozenset(
    {
        "step",
        "batch_size",
        "lr",
        "workers",
        "strategy",
        "topology",
        "metrics",
        "peak",
        "last_fire",
        "steps_since_fired",
        "seconds_since_fired",
        "window_mean",
        "window_min",
        "window_max",
        "slope",
    }
)
METRIC_NAMES = frozenset(vocabulary.METRICS)
KNOWN_NAMES = CONTEXT_NAMES | METRIC_NAMES

_cel_env = celpy.Environment()


class PolicyError(ValueError):
    """A policy document that cannot be used; ``path`` says where (e.g. ``rules[0].when``)."""

    def __init__(self, message: str, *, path: str, position: int | None = None):
        super().__init__(f"{path}: {message}")
        self.message = message
        self.path = path
        self.position = position


MAX_EXPRESSION_LENGTH = 2000


@functools.lru_cache(maxsize=1024)
def _program(expression: str) -> celpy.Runner:
    """Compiled CEL, cached: compiling costs far more than evaluating."""
    return _cel_env.program(_cel_env.compile(expression))


def _compile(expression: Any, path: str) -> celpy.Runner:
    if not isinstance(expression, str) or not expression.strip():
        raise PolicyError("must be a non-empty CEL expression", path=path)
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise PolicyError(f"is longer than {MAX_EXPRESSION_LENGTH} characters", path=path)
    try:
        program = _program(expression)
    except CELParseError as exc:
        position, what = _syntax_error(expression, exc)
        raise PolicyError(
            f"CEL syntax error at position {position}: {what}\n"
            f"  {expression}\n  {' ' * position}^\n"
            f"Names you can use: {_names_hint()}",
            path=path,
            position=position,
        ) from None
    for node in _cel_env.compile(expression).iter_subtrees():
        if node.data == "ident" and node.children and str(node.children[0]) not in KNOWN_NAMES:
            token = node.children[0]
            raise PolicyError(
                f"unknown name {str(token)!r}; use {_names_hint()}",
                path=path,
                position=_offset(
                    expression, getattr(token, "line", None), getattr(token, "column", None)
                ),
            )
    return program


def _names_hint() -> str:
    return (
        f"a job variable ({', '.join(sorted(CONTEXT_NAMES))}), a metric "
        f"({', '.join(sorted(METRIC_NAMES))}) or metrics.<name> for a metric of your own"
    )


def _offset(expression: str, line: int | None, column: int | None) -> int | None:
    """The 0-based index into ``expression`` of a parser's 1-based line and column."""
    if line is None or column is None:
        return None
    lines = expression.split("\n")
    before = sum(len(text) + 1 for text in lines[: max(line - 1, 0)])
    return max(0, min(before + column - 1, len(expression)))


# What the parser's token names mean to someone writing an expression.
_TOKEN_WORDS = {
    "RPAR": "')'",
    "LPAR": "'('",
    "RSQB": "']'",
    "LSQB": "'['",
    "IDENT": "a name",
    "INT_LIT": "a number",
    "FLOAT_LIT": "a number",
    "STRING_LIT": "a string",
    "BOOL_LIT": "true or false",
    "BANG": "'!'",
    "MINUS": "'-'",
}
_WORD_OPERATORS = {"and": "&&", "or": "||", "not": "!"}


def _syntax_error(expression: str, exc: Exception) -> tuple[int, str]:
    """(0-based position, what is wrong) of a CEL parse error, in words."""
    cause = exc.__cause__ or exc.__context__
    token = getattr(cause, "token", None)
    expected = sorted(
        {
            _TOKEN_WORDS[name]
            for name in getattr(cause, "expected", ()) or ()
            if name in _TOKEN_WORDS
        }
    )
    wanted = f" (expected {', '.join(expected)})" if expected else ""
    if token is not None and getattr(token, "type", "") == "$END":
        return len(expression), f"the expression ends too early{wanted}"
    if token is not None:
        position = _offset(expression, token.line, token.column) or 0
        text = str(token)
        if text.lower() in _WORD_OPERATORS:
            return position, f"CEL writes {text!r} as {_WORD_OPERATORS[text.lower()]!r}"
        return position, f"unexpected {text!r}{wanted}"
    line = getattr(cause, "line", None) or getattr(exc, "line", None)
    column = getattr(cause, "column", None) or getattr(exc, "column", None)
    position = _offset(expression, line, column) or 0
    char = expression[position : position + 1]
    return position, (f"unexpected character {char!r}" if char else "syntax error") + wanted


def _number(value: Any, path: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PolicyError("must be a finite number", path=path)
    return float(value)


def parse_policy(document: Any) -> Policy:
    """Check a policy document and return it as dataclasses; raise PolicyError on the first problem."""
    if not isinstance(document, dict):
        raise PolicyError("a policy must be a JSON object", path="$")
    name = document.get("name", "")
    if not isinstance(name, str) or not name.strip():
        raise PolicyError("must be a non-empty string", path="name")
    dry_run = document.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise PolicyError("must be true or false", path="dry_run")
    window = document.get("window", DEFAULT_WINDOW)
    if isinstance(window, bool) or not isinstance(window, int) or not 2 <= window <= 1000:
        raise PolicyError(
            "must be an integer from 2 to 1000 (points per aggregate window)", path="window"
        )
    raw_rules = document.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise PolicyError("must be a non-empty list of rules", path="rules")
    if len(raw_rules) > 50:
        raise PolicyError("at most 50 rules per policy", path="rules")
    rules = []
    seen = set()
    for i, raw in enumerate(raw_rules):
        where = f"rules[{i}]"
        if not isinstance(raw, dict):
            raise PolicyError("a rule must be a JSON object", path=where)
        rule_name = raw.get("name")
        if not isinstance(rule_name, str) or not rule_name.strip():
            raise PolicyError("must be a non-empty string", path=f"{where}.name")
        if rule_name in seen:
            raise PolicyError(f"duplicate rule name {rule_name!r}", path=f"{where}.name")
        seen.add(rule_name)
        _compile(raw.get("when"), f"{where}.when")
        action = raw.get("action")
        if not isinstance(action, dict):
            raise PolicyError("must be an object with a type", path=f"{where}.action")
        action_type = action.get("type")
        if action_type not in POLICY_ACTION_TYPES:
            raise PolicyError(
                f"unknown action {action_type!r}; use one of {', '.join(POLICY_ACTION_TYPES)}",
                path=f"{where}.action.type",
            )
        value = action.get("value")
        if action_type in NUMERIC_ACTIONS or action_type in CHOICE_ACTIONS:
            if value is None:
                raise PolicyError(f"{action_type} needs a value", path=f"{where}.action.value")
            if isinstance(value, bool):
                raise PolicyError(
                    "must be a CEL expression or a literal", path=f"{where}.action.value"
                )
            if isinstance(value, (int, float)):
                value = repr(value)
            elif action_type in CHOICE_ACTIONS and value in CHOICE_ACTIONS[action_type]:
                value = f'"{value}"'
            _compile(value, f"{where}.action.value")
        else:
            value = None
        for_n = raw.get("for", 1)
        if isinstance(for_n, bool) or not isinstance(for_n, int) or not 1 <= for_n <= 1000:
            raise PolicyError("must be an integer from 1 to 1000", path=f"{where}.for")
        cooldown = _number(raw.get("cooldown_s", 0), f"{where}.cooldown_s") or 0.0
        if cooldown < 0:
            raise PolicyError("must not be negative", path=f"{where}.cooldown_s")
        max_per_hour = raw.get("max_per_hour")
        if max_per_hour is not None and (
            isinstance(max_per_hour, bool)
            or not isinstance(max_per_hour, int)
            or not 1 <= max_per_hour <= 3600
        ):
            raise PolicyError(
                "must be an integer from 1 to 3600, or null", path=f"{where}.max_per_hour"
            )
        flags = {}
        for flag, default in (("requires_approval", False), ("enabled", True)):
            flag_value = raw.get(flag, default)
            if not isinstance(flag_value, bool):
                raise PolicyError("must be true or false", path=f"{where}.{flag}")
            flags[flag] = flag_value
        bounds = raw.get("bounds") or {}
        if not isinstance(bounds, dict):
            raise PolicyError("must be an object with min and/or max", path=f"{where}.bounds")
        bound_min = _number(bounds.get("min"), f"{where}.bounds.min")
        bound_max = _number(bounds.get("max"), f"{where}.bounds.max")
        if bound_min is not None and bound_max is not None and bound_min > bound_max:
            raise PolicyError("min is larger than max", path=f"{where}.bounds")
        rules.append(
            Rule(
                name=rule_name,
                when=raw["when"],
                action_type=action_type,
                value=value,
                for_evaluations=for_n,
                cooldown_s=cooldown,
                bound_min=bound_min,
                bound_max=bound_max,
                max_per_hour=max_per_hour,
                **flags,
            )
        )
    return Policy(name=name, rules=tuple(rules), dry_run=dry_run, window=window)


def window_aggregates(recent: dict[str, list[tuple[int, float]]]) -> dict[str, dict[str, float]]:
    """Mean, min, max and least-squares slope (change per step) of each metric's window."""
    out: dict[str, dict[str, float]] = {
        "window_mean": {},
        "window_min": {},
        "window_max": {},
        "slope": {},
    }
    for name, points in recent.items():
        if not points:
            continue
        values = [v for _, v in points]
        out["window_mean"][name] = sum(values) / len(values)
        out["window_min"][name] = min(values)
        out["window_max"][name] = max(values)
        if len(points) >= 2:
            steps = [float(s) for s, _ in points]
            mean_s, mean_v = sum(steps) / len(steps), out["window_mean"][name]
            var = sum((s - mean_s) ** 2 for s in steps)
            if var > 0:
                out["slope"][name] = sum((s - mean_s) * (v - mean_v) for s, v in points) / var
    return out


def _activation(state: JobState, history: RuleHistory) -> dict[str, Any]:
    variables: dict[str, Any] = {
        name: value for name, value in state.metrics.items() if _IDENTIFIER.match(name)
    }
    variables.update(
        metrics=dict(state.metrics),
        peak=dict(state.peak),
        **window_aggregates(state.recent),
        last_fire=dict(history.last_fire),
        step=state.step,
        batch_size=state.batch_size,
        lr=float(state.lr),
        workers=state.workers,
        strategy=state.strategy,
        topology=state.topology,
        steps_since_fired=(
            state.step - history.last_fired_step
            if history.last_fired_step is not None
            else state.step
        ),
        seconds_since_fired=float(
            history.last_fired_age_s
            if history.last_fired_age_s is not None
            else state.seconds_running
        ),
    )
    return variables


def _evaluate(expression: str, variables: dict[str, Any]) -> Any:
    """Evaluate CEL; a missing metric or a type error counts as 'cannot say' (None)."""
    program = _program(expression)
    try:
        # A dict converts to a MapType, which is the Mapping evaluate takes.
        result = program.evaluate(json_to_cel(variables))  # type: ignore[arg-type]
    except (CELEvalError, KeyError, TypeError, ZeroDivisionError):
        return None
    if isinstance(result, CELEvalError):
        return None
    # cel-python's types subclass int/float/str (BoolType is an int): map them back.
    if isinstance(result, celpy.celtypes.BoolType):
        return bool(result)
    if isinstance(result, int):
        return int(result)
    if isinstance(result, float):
        return float(result)
    if isinstance(result, str):
        return str(result)
    return None


def _clamp(rule: Rule, value: float) -> float:
    if rule.bound_min is not None:
        value = max(rule.bound_min, value)
    if rule.bound_max is not None:
        value = min(rule.bound_max, value)
    return value


def _reverses(asked: float, clamped: float, current: float) -> bool:
    """Whether clamping turned a move one way into a move the other way."""
    return (asked > current and clamped < current) or (asked < current and clamped > current)


def _current(action_type: str, state: JobState) -> Any:
    return {
        "set_batch_size": state.batch_size,
        "set_lr": state.lr,
        "scale_workers": state.workers,
    }.get(action_type)


def evaluate_rule(rule: Rule, state: JobState, history: RuleHistory) -> RuleOutcome:
    """Evaluate one rule once. It fires when its condition held for ``for`` evaluations in a
    row, its cooldown has passed, and its action would change something."""
    if not rule.enabled:
        return RuleOutcome(rule.name, False, None, 0)
    variables = _activation(state, history)
    condition = _evaluate(rule.when, variables) is True
    consecutive = history.consecutive_true + 1 if condition else 0
    if not condition or consecutive < rule.for_evaluations:
        return RuleOutcome(rule.name, condition, None, consecutive)
    if history.last_fired_age_s is not None and history.last_fired_age_s < rule.cooldown_s:
        return RuleOutcome(rule.name, condition, None, consecutive)
    if rule.max_per_hour is not None and history.fired_last_hour >= rule.max_per_hour:
        return RuleOutcome(rule.name, condition, None, consecutive)
    value: Any = None
    action_type = rule.action_type
    extra: dict[str, Any] = {}
    if action_type == vocabulary.OPTIMIZE_GOODPUT:
        choice = goodput_choice(rule, state)
        if choice is None:
            return RuleOutcome(rule.name, condition, None, consecutive)
        action_type, value, extra = vocabulary.SET_BATCH_SIZE, choice.batch, choice.inputs()
    elif rule.value is not None:
        raw = _evaluate(rule.value, variables)
        if rule.action_type in NUMERIC_ACTIONS:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
                return RuleOutcome(rule.name, condition, None, consecutive)
            value = NUMERIC_ACTIONS[rule.action_type](_clamp(rule, float(raw)))
            if rule.action_type != "set_lr" and value < 1:
                return RuleOutcome(rule.name, condition, None, consecutive)
            current = _current(rule.action_type, state)
            if value == current:
                # Already there (often: clamped at a bound) — nothing to do.
                return RuleOutcome(rule.name, condition, None, consecutive)
            if current is not None and _reverses(float(raw), float(value), float(current)):
                # Bounds limit how far a rule moves a value, never which way: a rule asking
                # for more (batch_size * 2) while already above bounds.max does nothing.
                return RuleOutcome(rule.name, condition, None, consecutive)
        else:
            if raw not in CHOICE_ACTIONS[rule.action_type]:
                return RuleOutcome(rule.name, condition, None, consecutive)
            value = raw
    inputs = {k: v for k, v in variables.items() if not isinstance(v, dict)} | extra
    firing = Firing(rule=rule.name, action_type=action_type, value=value, inputs=inputs)
    return RuleOutcome(rule.name, condition, firing, 0)


def evaluate_policy(
    policy: Policy, state: JobState, histories: dict[str, RuleHistory]
) -> list[RuleOutcome]:
    return [
        evaluate_rule(rule, state, histories.get(rule.name, RuleHistory())) for rule in policy.rules
    ]
