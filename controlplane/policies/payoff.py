"""What each adaptation did to a job: throughput, statistical efficiency and goodput before
and after a change of its knobs, and the time it saved or lost against staying put.

A pure function over one run's whole-job series (no ORM; ``selectors.job_adaptations``
feeds it), so its figures are tested against hand-computed values.

Windows. The *after* window of a change applied at step ``A`` is the reported points with a
step above ``A`` and at most the next change's step; the first of them is dropped, since a
point stands for the ``log_every`` steps up to it and the first may mix steps before the
change with steps after it (and the new shapes' tracing). Of the rest, the first ``window``
are kept. The *before* window is the last ``window`` points of the previous regime (from
the run's start, or the previous change, to ``A``), chosen the same way. A window with no
point is reported as such: its figures are null, never guessed.

Figures. Throughput is the median of the ``throughput`` points in a window (samples/s);
the batch, workers, lr and noise scale are the medians of their series over the window's
steps. Statistical efficiency is Pollux's E(M) = (φ + M0)/(φ + M) (``goodput.efficiency``)
with M0 the batch the job was created with and one φ for both sides: the median ``gns``
over both windows, so that the two sides are compared at the same point of training (φ
grows as a job trains). Goodput = throughput × efficiency, in M0-equivalent samples/s.

Time saved. The change was in force from step ``A`` to the next change (or the latest
point): ``span_steps`` steps in ``span_s`` seconds (step times interpolated between the
reported points), during which the job made ``span_steps × M_after × E_after``
M0-equivalent samples of progress. At the goodput before the change the same progress
would have taken ``progress / goodput_before`` seconds; the difference with ``span_s`` is
the time saved (negative: lost). The pause a change costs is in ``span_s``, so it counts
against the change. When the batch did not change the efficiencies cancel and the
estimate needs no noise scale.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.policies import goodput

# Points per window, by default and at most (the API's ?window=).
DEFAULT_WINDOW = 10
MAX_WINDOW = 200


@dataclass(frozen=True)
class Point:
    """One whole-job metric point: the step it was reported at, its value, and its time
    (seconds since the epoch)."""

    step: int
    value: float
    time: float


@dataclass(frozen=True)
class Change:
    """One change of a job's knobs (a command, as every worker's node saw it).

    ``step`` is where it was applied (None: not applied, or not yet); ``value_from`` is the
    value before when the caller knows it and no series says it (strategy, topology)."""

    key: int
    action: str
    value: Any
    state: str
    step: int | None
    issued_by: str
    value_from: Any = None


@dataclass(frozen=True)
class Window:
    """The points of a window: how many throughput points, the steps they cover, and the
    medians of the series over those steps (None where a series had no point there)."""

    points: int
    first_step: int | None
    last_step: int | None
    throughput: float | None
    batch_size: float | None
    workers: float | None
    lr: float | None
    gns_points: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Effect:
    """What one change did. Figures are None where the windows did not say; ``note`` says
    why in words."""

    change: Change
    value_from: Any
    value_to: Any
    before: Window | None
    after: Window | None
    gns: float | None
    efficiency_before: float | None
    efficiency_after: float | None
    goodput_before: float | None
    goodput_after: float | None
    span_steps: int | None
    span_s: float | None
    time_saved_s: float | None
    note: str


_EMPTY = Window(0, None, None, None, None, None, None)


def _median(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(statistics.median(finite)) if finite else None


def _between(points: Sequence[Point], low: int, high: int) -> list[Point]:
    """Points with low ≤ step ≤ high (points sorted by step)."""
    steps = [p.step for p in points]
    return list(points[bisect.bisect_left(steps, low) : bisect.bisect_right(steps, high)])


def _window(series: Mapping[str, Sequence[Point]], chosen: list[Point]) -> Window:
    if not chosen:
        return _EMPTY
    low, high = chosen[0].step, chosen[-1].step

    def med(name: str) -> float | None:
        return _median([p.value for p in _between(series.get(name, ()), low, high)])

    return Window(
        points=len(chosen),
        first_step=low,
        last_step=high,
        throughput=_median([p.value for p in chosen]),
        batch_size=med("batch_size"),
        workers=med("workers"),
        lr=med("lr"),
        gns_points=[
            p.value
            for p in _between(series.get("gns", ()), low, high)
            if math.isfinite(p.value) and p.value >= 0
        ],
    )


def _regime(throughput: Sequence[Point], start: int | None, end: int | None) -> list[Point]:
    """The throughput points of a regime that began at step ``start`` (None: the run's
    start) and ended at step ``end`` (None: still in force), less its first point."""
    inside = [
        p
        for p in throughput
        if (start is None or p.step > start) and (end is None or p.step <= end)
    ]
    return inside[1:]


def _time_at(points: Sequence[Point], step: int) -> float | None:
    """The time the run reached ``step``, interpolated between the reported points around
    it (the nearest end's time outside them)."""
    if not points:
        return None
    steps = [p.step for p in points]
    i = bisect.bisect_left(steps, step)
    if i < len(points) and points[i].step == step:
        return points[i].time
    if i == 0:
        return points[0].time
    if i == len(points):
        return points[-1].time
    a, b = points[i - 1], points[i]
    return a.time + (b.time - a.time) * (step - a.step) / (b.step - a.step)


_SERIES_OF = {"set_batch_size": "batch_size", "scale_workers": "workers", "set_lr": "lr"}


def _number(value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def adaptation_effects(
    changes: Sequence[Change],
    series: Mapping[str, Sequence[Point]],
    *,
    base_batch: float,
    window: int = DEFAULT_WINDOW,
) -> list[Effect]:
    """The effect of each change of one run, in the order given (the caller's: by command
    order). ``series`` holds the run's whole-job points by name, each sorted by step:
    ``throughput`` (needed), ``batch_size``, ``workers``, ``lr``, ``gns`` (each optional).
    ``base_batch`` is M0, the batch the job's learning rate was set for."""
    if window < 1:
        raise ValueError(f"window must be at least 1 point, not {window}")
    if not base_batch > 0:
        raise ValueError(f"base batch must be positive, not {base_batch!r}")
    throughput = sorted(series.get("throughput", ()), key=lambda p: p.step)
    applied = sorted({c.step for c in changes if c.step is not None and c.state == "applied"})
    last_point = throughput[-1] if throughput else None
    effects = []
    for change in changes:
        if change.state != "applied" or change.step is None:
            effects.append(_not_applied(change))
            continue
        i = applied.index(change.step)
        previous = applied[i - 1] if i > 0 else None
        following = applied[i + 1] if i + 1 < len(applied) else None
        before = _window(series, _regime(throughput, previous, change.step)[-window:])
        after = _window(series, _regime(throughput, change.step, following)[:window])
        effects.append(
            _effect(change, before, after, throughput, following, last_point, base_batch)
        )
    return effects


def _not_applied(change: Change) -> Effect:
    note = {
        "failed": "not applied: the workers could not carry it out",
        "expired": "not applied: no agent took it in time",
    }.get(change.state, "not applied yet")
    return Effect(
        change, change.value_from, change.value, None, None, None, None, None, None, None,
        None, None, None, note,
    )  # fmt: skip


def _effect(
    change: Change,
    before: Window,
    after: Window,
    throughput: Sequence[Point],
    following: int | None,
    last_point: Point | None,
    base_batch: float,
) -> Effect:
    assert change.step is not None
    name = _SERIES_OF.get(change.action)
    value_from = change.value_from
    value_to = change.value
    if name is not None:
        seen_before = getattr(before, name)
        seen_after = getattr(after, name)
        if seen_before is not None:
            value_from = _number(seen_before)
        if seen_after is not None and change.action == "set_lr":
            # The lr a set_lr asked for is what the workers use; the series says it too.
            value_to = _number(seen_after)
    notes = []
    if not before.points:
        notes.append("no throughput reported before the change (after the run's first point)")
    if not after.points:
        notes.append("no throughput reported after the change yet (its first point is skipped)")
    gns = _median(before.gns_points + after.gns_points)
    eff_before = eff_after = None
    if gns is not None:
        if before.batch_size is not None:
            eff_before = float(
                goodput.efficiency(before.batch_size, gns=gns, base_batch=base_batch)
            )
        if after.batch_size is not None:
            eff_after = float(goodput.efficiency(after.batch_size, gns=gns, base_batch=base_batch))
    elif before.points or after.points:
        notes.append("no gradient noise scale (gns) reported: efficiency unknown")
    good_before = (
        before.throughput * eff_before
        if before.throughput is not None and eff_before is not None
        else None
    )
    good_after = (
        after.throughput * eff_after
        if after.throughput is not None and eff_after is not None
        else None
    )
    # The span the change was in force: to the next change, or to the latest point.
    end = following if following is not None else (last_point.step if last_point else None)
    span_steps = span_s = saved = None
    if end is not None and end > change.step and after.points:
        start_t, end_t = _time_at(throughput, change.step), _time_at(throughput, end)
        if start_t is not None and end_t is not None:
            span_steps, span_s = end - change.step, max(0.0, end_t - start_t)
            saved = _time_saved(span_steps, span_s, before, after, eff_before, eff_after)
            if saved is None and not notes:
                notes.append("the batch changed and no noise scale says what a sample is worth")
    return Effect(
        change=change,
        value_from=value_from,
        value_to=value_to,
        before=before,
        after=after,
        gns=gns,
        efficiency_before=eff_before,
        efficiency_after=eff_after,
        goodput_before=good_before,
        goodput_after=good_after,
        span_steps=span_steps,
        span_s=span_s,
        time_saved_s=saved,
        note="; ".join(notes),
    )


def _time_saved(
    span_steps: int,
    span_s: float,
    before: Window,
    after: Window,
    eff_before: float | None,
    eff_after: float | None,
) -> float | None:
    """Seconds the span's progress would have taken at the goodput before, less the
    seconds it took (see the module's docstring); None when the windows do not say."""
    if before.throughput is None or before.throughput <= 0 or after.batch_size is None:
        return None
    samples = span_steps * after.batch_size
    if eff_before is not None and eff_after is not None:
        progress = samples * eff_after
        staying = progress / (before.throughput * eff_before)
    elif before.batch_size is not None and before.batch_size == after.batch_size:
        # Same batch: the same efficiency on both sides, whatever the noise scale.
        staying = samples / before.throughput
    else:
        return None
    return staying - span_s
