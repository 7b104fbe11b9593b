"""Metric ingest (validate a batch from an agent, store it in bulk, push it live, have
the job's policy evaluated) and retention (delete the points of long-finished jobs)."""

from __future__ import annotations

import io
import logging
import math
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any, NamedTuple

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from controlplane.celery import enqueue
from controlplane.errors import InvalidInput, NotFound, PayloadTooLarge
from controlplane.jobs import selectors as job_selectors
from controlplane.jobs.models import Job, Node
from controlplane.live import channels
from controlplane.metrics.models import MetricBatch, MetricPoint

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 64
MAX_STEP = 2**62
MAX_RANK = 2**31 - 1
MAX_ID = 2**63 - 1
MAX_TIME = 32503680000.0  # year 3000: later timestamps are bugs, not measurements


def _point_error(index: int, message: str) -> InvalidInput:
    return InvalidInput(f"points[{index}]: {message}", details={"index": index})


def metrics_ingest(*, node: Node, batch_id: str, points: list[dict[str, Any]]) -> int:
    """Store one batch; returns the number of points stored (0 for a batch seen before).

    A point is ``{"job", "name", "step", "value", "rank" (optional), "time" (unix s)}``.
    The whole batch is checked before anything is written.
    """
    if not isinstance(batch_id, str) or not 1 <= len(batch_id) <= 64:
        raise InvalidInput("batch_id must be a string of 1 to 64 characters.")
    if not isinstance(points, list):
        raise InvalidInput("points must be a list.")
    if len(points) > settings.METRIC_BATCH_MAX_POINTS:
        raise PayloadTooLarge(
            f"A batch holds at most {settings.METRIC_BATCH_MAX_POINTS} points; "
            f"this one has {len(points)}. Split it.",
            details={"max_points": settings.METRIC_BATCH_MAX_POINTS},
        )
    job_ids = set()
    rows = []
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise _point_error(i, "must be an object")
        name, step, value = p.get("name"), p.get("step"), p.get("value")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH or "\x00" in name:
            raise _point_error(i, f"name must be a string of 1 to {MAX_NAME_LENGTH} characters")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
            raise _point_error(i, f"step must be an integer from 0 to {MAX_STEP}")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise _point_error(i, "value must be a finite number")
        rank = p.get("rank")
        if rank is not None and (
            isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= MAX_RANK
        ):
            raise _point_error(i, "rank must be a non-negative integer or null")
        job_id = p.get("job")
        if isinstance(job_id, bool) or not isinstance(job_id, int) or not 1 <= job_id <= MAX_ID:
            raise _point_error(i, "job must be an integer id")
        t = p.get("time")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= MAX_TIME:
            raise _point_error(i, "time must be a unix timestamp in seconds (1970 to 3000)")
        job_ids.add(job_id)
        rows.append(_Row(job_id, name, rank, step, float(value), float(t)))
    runs = job_selectors.runs_reporting(node, job_ids)
    unknown = job_ids - runs.keys()
    if unknown:
        raise NotFound(
            f"No workers of job(s) {sorted(unknown)} run on node {node.name}.",
            details={"jobs": sorted(unknown)},
        )
    try:
        with transaction.atomic():
            MetricBatch.objects.create(batch_id=batch_id, node=node, points=len(rows))
            _copy_rows(rows, runs)
            for job_id in job_ids:
                if runs[job_id].current:  # a straggler of an earlier run moves nothing
                    top = max(r.step for r in rows if r.job_id == job_id)
                    Job.objects.filter(id=job_id, last_step__lt=top).update(last_step=top)
            transaction.on_commit(lambda: _publish_batch(rows, runs))
            transaction.on_commit(lambda: _schedule_policy_evaluation(job_ids))
    except IntegrityError:
        if MetricBatch.objects.filter(batch_id=batch_id).exists():
            return 0  # a retry of a batch already stored
        raise
    return len(rows)


class _Row(NamedTuple):
    job_id: int
    name: str
    rank: int | None
    step: int
    value: float
    time: float


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_rows(rows: list[_Row], runs: dict[int, job_selectors.ReportingRun]) -> None:
    """Bulk insert with COPY: several times faster than INSERTs built by the ORM."""
    buffer = io.StringIO()
    write = buffer.write
    # "job_id\trun_id\t" once per job, not per point.
    keys = {job_id: f"{job_id}\t{run.id}\t" for job_id, run in runs.items()}
    for r in rows:
        when = datetime.fromtimestamp(r.time, tz=dt_timezone.utc).isoformat()
        rank = "\\N" if r.rank is None else str(r.rank)
        write(
            f"{keys[r.job_id]}{r.name.translate(_COPY_ESCAPES)}\t{rank}\t{r.step}\t{r.value!r}\t{when}\n"
        )
    buffer.seek(0)
    with connection.cursor() as cursor:
        cursor.copy_expert(
            f"COPY {MetricPoint._meta.db_table} (job_id, run_id, name, rank, step, value, time) FROM STDIN",
            buffer,
        )


POLICY_DEBOUNCE_S = 0.5
# policies/tasks.py: evaluate one job's policy (queued by name: policies sits above metrics).
EVALUATE_JOB_TASK = "policies.evaluate_job"


def _schedule_policy_evaluation(job_ids: set[int]) -> None:
    """Fresh metrics → evaluate the job's policy now (leading edge) and once more at the
    end of the debounce window (trailing edge, for the metrics that arrive meanwhile): at
    most two evaluations per window per job, and a condition that just became true is
    acted on without waiting out the window. Celery beat still evaluates every
    POLICY_EVAL_INTERVAL_S as a backstop."""
    with_policy = Job.objects.filter(
        id__in=job_ids, policy__isnull=False, policy__enabled=True, status=Job.Status.RUNNING
    ).values_list("id", flat=True)
    for job_id in with_policy:
        try:
            first = channels.redis_client().set(
                f"{channels.frame_log_key(job_id)}:eval",
                1,
                nx=True,
                px=int(POLICY_DEBOUNCE_S * 1000),
            )
        except Exception:  # noqa: BLE001 - Redis trouble: the beat evaluates anyway
            log.warning("could not debounce policy evaluation of job %s", job_id)
            continue
        if first and enqueue(EVALUATE_JOB_TASK, job_id):
            enqueue(EVALUATE_JOB_TASK, job_id, countdown=POLICY_DEBOUNCE_S)


def _publish_batch(rows: list[_Row], runs: dict[int, job_selectors.ReportingRun]) -> None:
    """One ``metrics`` frame per job: ``{"run": <run number>, "series": [...]}``; a
    browser showing another run of the job ignores it."""
    by_job: dict[int, dict[tuple[str, int | None], dict[str, list]]] = {}
    for r in rows:
        series = by_job.setdefault(r.job_id, {}).setdefault(
            (r.name, r.rank), {"step": [], "value": [], "time": []}
        )
        series["step"].append(r.step)
        series["value"].append(r.value)
        series["time"].append(r.time)
    for job_id, series in by_job.items():
        channels.publish_to_job(
            job_id,
            channels.FRAME_METRICS,
            {
                "run": runs[job_id].number,
                "series": [
                    {"name": name, "rank": rank, **cols} for (name, rank), cols in series.items()
                ],
            },
        )


def metrics_apply_retention(*, days: float, chunk: int = 50_000) -> int:
    """Delete the metric points of jobs that ended more than ``days`` ago, in chunks so
    no single statement holds locks for long. Running jobs keep everything."""
    cutoff = timezone.now() - timedelta(days=days)
    job_ids = list(
        Job.objects.filter(status__in=Job.TERMINAL, finished_at__lt=cutoff).values_list(
            "id", flat=True
        )
    )
    deleted = 0
    for job_id in job_ids:
        while True:
            ids = list(
                MetricPoint.objects.filter(job_id=job_id).values_list("id", flat=True)[:chunk]
            )
            if not ids:
                break
            deleted += MetricPoint.objects.filter(id__in=ids).delete()[0]
    return deleted
