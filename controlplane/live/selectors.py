"""Reads of stored metrics (one run of a job at a time), shaped as columnar series and
downsampled for charts."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from controlplane.live.downsample import DEFAULT_DOWNSAMPLE, downsample_indices
from controlplane.live.models import MetricPoint


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
    ``live.downsample``). Runs are read apart: a restarted run counts its steps again."""
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
