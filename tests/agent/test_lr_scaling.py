"""Learning-rate scaling rules for batch-size changes."""

import pytest

from agent.scaling import scaled_lr


@pytest.mark.parametrize("rule, expected", [("none", 0.1), ("linear", 0.4), ("sqrt", 0.2)])
def test_rules(rule, expected):
    assert scaled_lr(0.1, old_batch=32, new_batch=128, rule=rule) == pytest.approx(expected)


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown lr scaling rule"):
        scaled_lr(0.1, old_batch=1, new_batch=2, rule="cubic")
