"""Learning-rate scaling rules for batch-size changes."""

import pytest

from agent.runtime.scaling import scaled_lr


@pytest.mark.parametrize("rule, expected", [("none", 0.1), ("linear", 0.4), ("sqrt", 0.2)])
def test_rules(rule, expected):
    assert scaled_lr(0.1, old_batch=32, new_batch=128, rule=rule) == pytest.approx(expected)


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown lr scaling rule"):
        scaled_lr(0.1, old_batch=1, new_batch=2, rule="cubic")


def test_adascale_gain_lies_between_no_change_and_linear_by_the_noise_scale():
    # Noise-free gradients: a bigger batch buys nothing; noise-dominated: linear.
    assert scaled_lr(0.1, old_batch=32, new_batch=128, rule="adascale", gns=0.0) == pytest.approx(
        0.1
    )
    assert scaled_lr(0.1, old_batch=32, new_batch=128, rule="adascale", gns=1e9) == pytest.approx(
        0.4, rel=1e-6
    )
    # gns = 64: (1 + 64/32) / (1 + 64/128) = 3 / 1.5 = 2.
    assert scaled_lr(0.1, old_batch=32, new_batch=128, rule="adascale", gns=64.0) == pytest.approx(
        0.2
    )
    # Two steps compose into one: 32 → 64 → 128 equals 32 → 128.
    once = scaled_lr(0.1, old_batch=32, new_batch=128, rule="adascale", gns=50.0)
    twice = scaled_lr(
        scaled_lr(0.1, old_batch=32, new_batch=64, rule="adascale", gns=50.0),
        old_batch=64,
        new_batch=128,
        rule="adascale",
        gns=50.0,
    )
    assert once == pytest.approx(twice)


def test_adascale_without_a_noise_estimate_falls_back_to_sqrt():
    assert scaled_lr(0.1, old_batch=32, new_batch=128, rule="adascale", gns=None) == pytest.approx(
        0.2
    )
