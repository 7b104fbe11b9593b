"""What a change of a job's knobs did (controlplane.policies.payoff), against figures
worked out by hand: windows that skip the first point of a regime and stop at the next
change, Pollux's efficiency with one noise scale for both sides, and the time saved over
the span the change was in force."""

from __future__ import annotations

import pytest

from controlplane.policies.payoff import Change, Point, adaptation_effects


def pts(rows):
    """(step, value, time) triples as points."""
    return [Point(step, float(value), float(time)) for step, value, time in rows]


def constant(steps, value, times):
    return pts([(s, value, t) for s, t in zip(steps, times, strict=True)])


STEPS = [10, 20, 30, 40, 50, 60, 70, 80]
# Before the change: 10 steps of 32 samples a second (320 samples/s). After it: 10 steps of
# 64 samples every 1.28 s (500 samples/s), after a pause of 1 s at the change.
TIMES = [1, 2, 3, 4, 6.28, 7.56, 8.84, 10.12]


def batch_change_series(gns=96.0):
    series = {
        "throughput": pts(zip(STEPS, [100, 310, 330, 320, 150, 490, 510, 500], TIMES, strict=True)),
        "batch_size": pts(zip(STEPS, [32] * 4 + [64] * 4, TIMES, strict=True)),
        "workers": constant(STEPS, 2, TIMES),
    }
    if gns is not None:
        series["gns"] = constant(STEPS, gns, TIMES)
    return series


def change(step=40, action="set_batch_size", value=64, state="applied", key=1, **kw):
    return Change(
        key=key, action=action, value=value, state=state, step=step, issued_by="policy:p/r", **kw
    )


def test_batch_change_measures_both_windows_and_the_time_saved_by_hand():
    (effect,) = adaptation_effects([change()], batch_change_series(), base_batch=32)
    # Before: steps 20, 30, 40 (the run's first point, step 10, is dropped): median 320.
    assert (effect.before.points, effect.before.first_step, effect.before.last_step) == (3, 20, 40)
    assert effect.before.throughput == 320
    # After: steps 60, 70, 80 (step 50 mixes steps before the change): median 500.
    assert (effect.after.points, effect.after.first_step) == (3, 60)
    assert effect.after.throughput == 500
    assert (effect.value_from, effect.value_to) == (32, 64)
    # φ = 96, M0 = 32: E(32) = 128/128 = 1, E(64) = 128/160 = 0.8.
    assert effect.gns == 96
    assert effect.efficiency_before == pytest.approx(1.0)
    assert effect.efficiency_after == pytest.approx(0.8)
    assert effect.goodput_before == pytest.approx(320.0)
    assert effect.goodput_after == pytest.approx(400.0)
    # In force from step 40 (t = 4 s) to the latest point, step 80 (t = 10.12 s): 40 steps
    # in 6.12 s, making 40 · 64 · 0.8 = 2048 M0-samples of progress; at 320 M0-samples/s
    # that takes 6.4 s, so the change saved 0.28 s — 1.28 s of better goodput, less the
    # 1 s pause it cost.
    assert (effect.span_steps, effect.span_s) == (40, pytest.approx(6.12))
    assert effect.time_saved_s == pytest.approx(0.28)
    assert effect.note == ""


def test_a_batch_that_buys_too_little_per_sample_loses_time():
    # φ = 0: every sample beyond M0 is wasted, E(64) = 32/64 = 0.5; goodput after 250 < 320.
    # The span's 40 · 64 · 0.5 = 1280 M0-samples would have taken 4 s: 2.12 s lost.
    (effect,) = adaptation_effects([change()], batch_change_series(gns=0.0), base_batch=32)
    assert effect.efficiency_after == pytest.approx(0.5)
    assert effect.goodput_after == pytest.approx(250.0)
    assert effect.time_saved_s == pytest.approx(-2.12)


def test_without_noise_scale_a_batch_change_gets_no_efficiency_nor_estimate():
    (effect,) = adaptation_effects([change()], batch_change_series(gns=None), base_batch=32)
    assert effect.before.throughput == 320 and effect.after.throughput == 500
    assert effect.gns is None
    assert effect.efficiency_before is None and effect.goodput_after is None
    assert effect.time_saved_s is None
    assert "gns" in effect.note


def test_a_worker_change_at_the_same_batch_needs_no_noise_scale():
    steps, times = [10, 20, 30, 40, 50, 60], [2, 4, 6, 8, 10, 11]
    series = {
        "throughput": pts(zip(steps, [50, 100, 100, 80, 190, 210], times, strict=True)),
        "batch_size": constant(steps, 64, times),
        "workers": pts(zip(steps, [1, 1, 1, 2, 2, 2], times, strict=True)),
    }
    scale = change(step=30, action="scale_workers", value=2)
    (effect,) = adaptation_effects([scale], series, base_batch=64, window=5)
    assert effect.value_from == 1 and effect.value_to == 2
    assert effect.before.throughput == 100  # steps 20, 30
    assert effect.after.throughput == 200  # steps 50, 60 (step 40 dropped)
    assert effect.efficiency_before is None
    # 30 steps · 64 samples = 1920 samples: 19.2 s at 100 samples/s; they took 11 − 6 = 5 s.
    assert effect.span_steps == 30 and effect.span_s == pytest.approx(5.0)
    assert effect.time_saved_s == pytest.approx(1920 / 100 - 5)


def test_windows_stop_at_the_next_change_and_keep_at_most_window_points():
    steps = list(range(10, 210, 10))  # 20 points, one per second
    times = [s / 10 for s in steps]
    throughput = [100.0 if s <= 100 else 200.0 if s <= 150 else 400.0 for s in steps]
    batch = [32 if s <= 100 else 64 if s <= 150 else 128 for s in steps]
    series = {
        "throughput": pts(zip(steps, throughput, times, strict=True)),
        "batch_size": pts(zip(steps, batch, times, strict=True)),
        "gns": constant(steps, 1e9, times),  # huge φ: every batch is as good as M0
    }
    first, second = change(step=100, value=64, key=1), change(step=150, value=128, key=2)
    one, two = adaptation_effects([first, second], series, base_batch=32, window=3)
    # Before the first change: the last 3 of steps 20..100.
    assert (one.before.first_step, one.before.last_step, one.before.throughput) == (80, 100, 100)
    # After it: steps 120, 130, 140 (110 dropped; at most 3), never past step 150.
    assert (one.after.first_step, one.after.last_step, one.after.throughput) == (120, 140, 200)
    # It was in force from step 100 to step 150: 5 s; its 50 · 64 samples at 100/s take 32 s.
    assert one.span_steps == 50 and one.span_s == pytest.approx(5.0)
    assert one.time_saved_s == pytest.approx(50 * 64 / 100 - 5, rel=1e-6)
    # The second change's before window is the first change's regime (120..150).
    assert (two.before.first_step, two.before.last_step, two.before.throughput) == (130, 150, 200)
    assert (two.value_from, two.value_to) == (64, 128)
    assert (two.after.first_step, two.after.throughput) == (170, 400)
    assert two.span_steps == 50


def test_change_just_applied_has_no_after_window_yet():
    series = batch_change_series()
    series = {name: [p for p in points if p.step <= 50] for name, points in series.items()}
    (effect,) = adaptation_effects([change()], series, base_batch=32)
    assert effect.before.throughput == 320
    assert effect.after.points == 0 and effect.after.throughput is None
    assert effect.goodput_after is None and effect.time_saved_s is None
    assert "after the change yet" in effect.note


def test_commands_not_applied_are_listed_without_figures():
    failed = change(step=None, state="failed", key=1)
    pending = change(step=None, state="sent", key=2)
    effects = adaptation_effects([failed, pending], batch_change_series(), base_batch=32)
    assert [e.note for e in effects] == [
        "not applied: the workers could not carry it out",
        "not applied yet",
    ]
    assert all(e.before is None and e.time_saved_s is None for e in effects)


def test_strategy_switch_keeps_the_value_the_caller_knew():
    switch = change(action="set_strategy", value="sma", value_from="ssgd")
    (effect,) = adaptation_effects([switch], batch_change_series(), base_batch=32)
    assert (effect.value_from, effect.value_to) == ("ssgd", "sma")


def test_bad_window_or_base_batch_is_refused():
    with pytest.raises(ValueError, match="window"):
        adaptation_effects([], {}, base_batch=32, window=0)
    with pytest.raises(ValueError, match="base batch"):
        adaptation_effects([], {}, base_batch=0)
