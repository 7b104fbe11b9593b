"""Reads of stored metrics, one run of a job at a time (each run counts its steps from its
own start): columnar series downsampled for charts, and the whole-job series a policy
reads when it is evaluated or replayed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.db.models import Max

from controlplane.metrics.downsample import DEFAULT_DOWNSAMPLE, downsample_indices
from controlplane.metrics.models import MetricPoint


def run_metric_series(
    *,
    run_id: int,
    names: list[str] | None,
    since: int | None,
    until: int | None,
    max_points: int,
    per_rank: bool = True,
    downsample: str = DEFAULT_DOWNSAMPLE,
) -> list[dict[str, Any]]:
    """Series of one run of a job as ``[{"name", "rank", "step": [...], "value": [...],
    "time": [...]}]``, each cut to ``max_points`` with the ``downsample`` method (see
    ``metrics.downsample``). Runs are read apart: a restarted run counts its steps again."""
    qs = MetricPoint.objects.filter(run_id=run_id)
    if names:
        qs = qs.filter(name__in=names)
    if since is not None:
        qs = qs.filter(step__gte=since)
    if until is not None:
        qs = qs.filter(step__lte=until)
    if not per_rank:
        qs = qs.filter(rank__isnull=True)
    grouped: dict[tuple[str, int | None], list[tuple[int, float, float]]] = defaultdict(list)
    for name, rank, step, value, time in (
        qs.order_by("name", "rank", "step", "id")
        .values_list("name", "rank", "step", "value", "time")
        .iterator(chunk_size=5000)
    ):
        grouped[(name, rank)].append((step, value, time.timestamp()))
    series = []
    for (name, rank), points in sorted(
        grouped.items(), key=lambda kv: (kv[0][0], kv[0][1] is not None, kv[0][1] or 0)
    ):
        steps = [p[0] for p in points]
        values = [p[1] for p in points]
        keep = downsample_indices(downsample, steps, values, max_points)
        series.append(
            {
                "name": name,
                "rank": rank,
                "points": len(points),
                "step": [steps[i] for i in keep],
                "value": [values[i] for i in keep],
                "time": [points[i][2] for i in keep],
            }
        )
    return series


def run_whole_job_latest(
    run_id: int, window: int
) -> tuple[dict[str, float], dict[str, float], dict[str, list[tuple[int, float]]]]:
    """Latest value, highest value and last ``window`` (step, value) points of each
    whole-job series of one run (index scans per name). Only that run's: a restarted run
    counts its steps again and its peaks start over."""
    names = (
        MetricPoint.objects.filter(run_id=run_id, rank__isnull=True)
        .values_list("name", flat=True)
        .distinct()
    )
    latest, peak, recent = {}, {}, {}
    for name in names:
        series = MetricPoint.objects.filter(run_id=run_id, name=name, rank__isnull=True)
        points = list(series.order_by("-step", "-id").values_list("step", "value")[:window])
        if points:
            latest[name] = points[0][1]
            recent[name] = points[::-1]
            peak[name] = series.aggregate(m=Max("value"))["m"]
    return latest, peak, recent


def run_whole_job_latest_series(
    run_id: int, names: tuple[str, ...], limit: int
) -> dict[str, list[tuple[int, float]]]:
    """The last ``limit`` (step, value) points of each whole-job series in ``names`` of one
    run, oldest first (a series never reported is absent)."""
    out = {}
    for name in names:
        points = list(
            MetricPoint.objects.filter(run_id=run_id, name=name, rank__isnull=True)
            .order_by("-step", "-id")
            .values_list("step", "value")[:limit]
        )
        if points:
            out[name] = points[::-1]
    return out


def run_whole_job_points(run_id: int | None) -> Iterator[tuple[int, str, float, datetime]]:
    """Every whole-job point of one run as (step, name, value, time), in step order
    (nothing for no run: a job never placed recorded nothing)."""
    if run_id is None:
        return iter(())
    return (
        MetricPoint.objects.filter(run_id=run_id, rank__isnull=True)
        .order_by("step", "id")
        .values_list("step", "name", "value", "time")
        .iterator(chunk_size=5000)
    )


def runs_latest_whole_job_value(run_ids: list[int], name: str) -> dict[int, float]:
    """The latest (highest step) whole-job value of series ``name`` of each run: one query
    for a page of jobs (DISTINCT ON over the run/name/rank/step index)."""
    if not run_ids:
        return {}
    rows = (
        MetricPoint.objects.filter(run_id__in=run_ids, name=name, rank__isnull=True)
        .order_by("run_id", "-step", "-id")
        .distinct("run_id")
        .values_list("run_id", "value")
    )
    return dict(rows)


def runs_latest_per_rank_values(
    run_ids: list[int], names: list[str]
) -> dict[int, dict[int, dict[str, float]]]:
    """The latest (highest step) per-worker value of each series in ``names`` of each run:
    {run_id: {rank: {name: value}}}, one query for a page of jobs (what the workers
    tables show per worker)."""
    if not run_ids:
        return {}
    rows = (
        MetricPoint.objects.filter(run_id__in=run_ids, name__in=names, rank__isnull=False)
        .order_by("run_id", "name", "rank", "-step", "-id")
        .distinct("run_id", "name", "rank")
        .values_list("run_id", "rank", "name", "value")
    )
    out: dict[int, dict[int, dict[str, float]]] = {}
    for run_id, rank, name, value in rows:
        out.setdefault(run_id, {}).setdefault(rank, {})[name] = value
    return out


def job_metric_rows(
    *, job_id: int, run_id: int | None, names: list[str] | None
) -> Iterator[tuple[int, str, int | None, int, float, datetime]]:
    """Every stored point of a job (or of one run of it) as (run number, name, rank, step,
    value, time), by run, name, rank and step, read in chunks: what a CSV export streams."""
    qs = MetricPoint.objects.filter(job_id=job_id)
    if run_id is not None:
        qs = qs.filter(run_id=run_id)
    if names:
        qs = qs.filter(name__in=names)
    return (
        qs.order_by("run__number", "name", "rank", "step", "id")
        .values_list("run__number", "name", "rank", "step", "value", "time")
        .iterator(chunk_size=5000)
    )


def run_whole_job_series(
    run_id: int, names: list[str]
) -> dict[str, list[tuple[int, float, datetime]]]:
    """The whole-job points of each series in ``names`` of one run, as (step, value, time)
    in step order: what the adaptations view measures its windows on."""
    out: dict[str, list[tuple[int, float, datetime]]] = {name: [] for name in names}
    rows = (
        MetricPoint.objects.filter(run_id=run_id, name__in=names, rank__isnull=True)
        .order_by("name", "step", "id")
        .values_list("name", "step", "value", "time")
        .iterator(chunk_size=5000)
    )
    for name, step, value, time in rows:
        out[name].append((step, value, time))
    return out
