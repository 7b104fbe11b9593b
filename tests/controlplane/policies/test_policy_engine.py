"""The pure policy engine: parsing, CEL conditions, bounds, hysteresis and cooldown."""

import pytest

from controlplane.policies.engine import (
    PolicyError,
    evaluate_policy,
    evaluate_rule,
    parse_policy,
)
from controlplane.policies.rules import JobState, RuleHistory

DOUBLING = {
    "name": "double",
    "rules": [
        {
            "name": "grow",
            "when": "steps_since_fired >= 100",
            "action": {"type": "set_batch_size", "value": "batch_size * 2"},
            "bounds": {"max": 256},
        }
    ],
}


def state(step=0, batch_size=32, **metrics):
    return JobState(
        step=step, batch_size=batch_size, lr=0.1, workers=2, seconds_running=10.0, metrics=metrics
    )


def test_rule_fires_when_enough_steps_passed_since_the_job_started():
    rule = parse_policy(DOUBLING).rules[0]
    assert evaluate_rule(rule, state(step=99), RuleHistory()).firing is None
    firing = evaluate_rule(rule, state(step=100), RuleHistory()).firing
    assert firing.action_type == "set_batch_size" and firing.value == 64
    assert firing.inputs["batch_size"] == 32 and firing.inputs["step"] == 100


def test_steps_are_counted_from_the_last_firing():
    rule = parse_policy(DOUBLING).rules[0]
    assert evaluate_rule(rule, state(step=150), RuleHistory(last_fired_step=100)).firing is None
    assert evaluate_rule(rule, state(step=200), RuleHistory(last_fired_step=100)).firing is not None


def test_value_is_clamped_to_bounds_and_no_op_is_not_fired():
    rule = parse_policy(DOUBLING).rules[0]
    assert evaluate_rule(rule, state(step=100, batch_size=200), RuleHistory()).firing.value == 256
    assert evaluate_rule(rule, state(step=100, batch_size=256), RuleHistory()).firing is None


def test_bounds_never_turn_a_grow_into_a_shrink():
    # The job is already above bounds.max (set by hand, or by another rule): doubling
    # asks for more; clamping to 256 would shrink 512 -> 256, so the rule does not fire.
    rule = parse_policy(DOUBLING).rules[0]
    assert evaluate_rule(rule, state(step=100, batch_size=512), RuleHistory()).firing is None
    halving = parse_policy(
        {
            "name": "halve",
            "rules": [
                {
                    "name": "shrink",
                    "when": "true",
                    "action": {"type": "set_batch_size", "value": "batch_size / 2"},
                    "bounds": {"min": 64},
                }
            ],
        }
    ).rules[0]
    assert evaluate_rule(halving, state(batch_size=32), RuleHistory()).firing is None
    assert evaluate_rule(halving, state(batch_size=100), RuleHistory()).firing.value == 64


def test_hysteresis_needs_consecutive_true_evaluations():
    policy = parse_policy(
        {
            "name": "p",
            "rules": [
                {
                    "name": "low loss",
                    "when": "loss < 0.5",
                    "for": 3,
                    "action": {"type": "set_lr", "value": "lr / 2.0"},
                }
            ],
        }
    )
    history = RuleHistory()
    outcomes = []
    for _ in range(3):
        outcome = evaluate_policy(policy, state(step=10, loss=0.2), {"low loss": history})[0]
        outcomes.append(outcome.firing)
        history = RuleHistory(consecutive_true=outcome.consecutive_true)
    assert outcomes[0] is None and outcomes[1] is None
    assert outcomes[2].value == pytest.approx(0.05)


def test_cooldown_blocks_a_second_firing():
    policy = parse_policy(
        {
            "name": "p",
            "rules": [
                {
                    "name": "r",
                    "when": "true",
                    "cooldown_s": 60,
                    "action": {"type": "set_lr", "value": 0.5},
                }
            ],
        }
    )
    rule = policy.rules[0]
    assert evaluate_rule(rule, state(), RuleHistory(last_fired_age_s=10)).firing is None
    assert evaluate_rule(rule, state(), RuleHistory(last_fired_age_s=61)).firing.value == 0.5


def test_missing_metric_means_the_rule_does_not_fire():
    rule = parse_policy(
        {
            "name": "p",
            "rules": [
                {
                    "name": "r",
                    "when": "gns > 100.0",
                    "action": {"type": "set_batch_size", "value": 64},
                }
            ],
        }
    ).rules[0]
    assert evaluate_rule(rule, state(step=5), RuleHistory()).firing is None
    assert evaluate_rule(rule, state(step=5, gns=150.0), RuleHistory()).firing.value == 64


@pytest.mark.parametrize(
    "document, path",
    [
        ({"rules": []}, "name"),
        ({"name": "p", "rules": []}, "rules"),
        (
            {"name": "p", "rules": [{"name": "r", "when": "step >", "action": {"type": "stop"}}]},
            "rules[0].when",
        ),
        (
            {"name": "p", "rules": [{"name": "r", "when": "true", "action": {"type": "explode"}}]},
            "rules[0].action.type",
        ),
        (
            {"name": "p", "rules": [{"name": "r", "when": "true", "action": {"type": "set_lr"}}]},
            "rules[0].action.value",
        ),
        (
            {
                "name": "p",
                "rules": [{"name": "r", "when": "true", "for": 0, "action": {"type": "stop"}}],
            },
            "rules[0].for",
        ),
        (
            {
                "name": "p",
                "rules": [
                    {
                        "name": "r",
                        "when": "true",
                        "action": {"type": "stop"},
                        "bounds": {"min": 5, "max": 1},
                    }
                ],
            },
            "rules[0].bounds",
        ),
    ],
)
def test_invalid_policies_name_the_place_to_fix(document, path):
    with pytest.raises(PolicyError) as info:
        parse_policy(document)
    assert info.value.path == path


def test_cel_syntax_error_reports_a_position():
    with pytest.raises(PolicyError) as info:
        parse_policy(
            {"name": "p", "rules": [{"name": "r", "when": "loss < ", "action": {"type": "stop"}}]}
        )
    assert info.value.position == len("loss < ")  # where the expression ends too early


@pytest.mark.parametrize(
    "when, position, says",
    [
        ("gns > 2.0 *", 11, "ends too early"),
        ("loss < 0.5 and gns > 1", 11, "CEL writes 'and' as '&&'"),
        ("batch_size * 2)", 14, "unexpected ')'"),
        ("(loss", 5, "expected ')'"),
        ("loss < 1 && los > 2", 12, "unknown name 'los'"),
    ],
)
def test_cel_errors_point_at_the_character_and_say_what_is_wrong(when, position, says):
    with pytest.raises(PolicyError) as info:
        parse_policy(
            {"name": "p", "rules": [{"name": "r", "when": when, "action": {"type": "stop"}}]}
        )
    assert info.value.path == "rules[0].when"
    assert info.value.position == position  # a 0-based index into the expression
    assert says in info.value.message
    assert "steps_since_fired" in info.value.message  # the names one may use
    if "unknown" not in says:
        assert f"  {when}\n  {' ' * position}^" in info.value.message


def test_window_aggregates_and_slope_are_available_to_rules():
    policy = parse_policy(
        {
            "name": "p",
            "window": 4,
            "rules": [
                {
                    "name": "plateau",
                    "when": "slope.loss > -0.001 && window_mean.loss < 1.0",
                    "action": {"type": "set_lr", "value": "lr / 2.0"},
                }
            ],
        }
    )
    assert policy.window == 4
    falling = [(s, 2.0 - 0.01 * s) for s in range(10, 50, 10)]  # slope -0.01 per step
    flat = [(s, 0.5) for s in range(10, 50, 10)]
    rule = policy.rules[0]
    assert (
        evaluate_rule(
            rule,
            JobState(
                step=40,
                batch_size=32,
                lr=0.1,
                workers=2,
                seconds_running=1,
                metrics={"loss": 1.6},
                recent={"loss": falling},
            ),
            RuleHistory(),
        ).firing
        is None
    )
    firing = evaluate_rule(
        rule,
        JobState(
            step=40,
            batch_size=32,
            lr=0.1,
            workers=2,
            seconds_running=1,
            metrics={"loss": 0.5},
            recent={"loss": flat},
        ),
        RuleHistory(),
    ).firing
    assert firing.value == pytest.approx(0.05)


def test_window_must_be_a_sensible_size():
    with pytest.raises(PolicyError) as info:
        parse_policy(
            {
                "name": "p",
                "window": 1,
                "rules": [{"name": "r", "when": "true", "action": {"type": "stop"}}],
            }
        )
    assert info.value.path == "window"
