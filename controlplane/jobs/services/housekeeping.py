"""Keeping many jobs in order: a job's labels (set at creation, edited later), archiving
(hidden from the default jobs list) and deleting a job with everything under it.

A job that has not ended can be neither archived nor deleted: its agents still report
about it and its page still follows it. A deletion is audited in ``JobDeletion``, since
the job's own events go with it.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from controlplane.errors import Conflict, InvalidInput
from controlplane.jobs.lifecycle import event_record
from controlplane.jobs.models import Event, Job, JobDeletion
from controlplane.live import channels

LABELS_MAX_ENTRIES = 20
LABEL_MAX_KEY = 100
LABEL_MAX_VALUE = 200


def labels_clean(raw: Any) -> dict[str, str]:
    """A job's labels: a flat object of label → value strings, at most LABELS_MAX_ENTRIES
    pairs. Raises InvalidInput saying what to fix."""
    if raw is None:
        return {}
    example = 'such as {"team": "vision", "experiment": "lr-sweep"}'
    if not isinstance(raw, dict):
        raise InvalidInput(
            f"labels must be an object of label → value strings, {example}.",
            details={"labels": raw},
        )
    if len(raw) > LABELS_MAX_ENTRIES:
        raise InvalidInput(
            f"labels has {len(raw)} entries; at most {LABELS_MAX_ENTRIES} are allowed.",
            details={"labels": "too many"},
        )
    clean: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key.strip() or len(key) > LABEL_MAX_KEY:
            raise InvalidInput(
                f"Label name {key!r} must be 1–{LABEL_MAX_KEY} characters.",
                details={"labels": key},
            )
        if not isinstance(value, str) or len(value) > LABEL_MAX_VALUE:
            raise InvalidInput(
                f"The value of label {key!r} must be a string of at most {LABEL_MAX_VALUE} "
                f"characters, {example}.",
                details={"labels": {key: value}},
            )
        clean[key.strip()] = value
    return clean


def job_labels_set(*, job: Job, labels: Any, actor: str) -> Job:
    """Replace the job's labels (any status), recorded as an event."""
    clean = labels_clean(labels)
    with transaction.atomic():
        Job.objects.filter(id=job.id).update(labels=clean)
        text = ", ".join(f"{k}={v}" for k, v in clean.items()) or "none"
        event_record(job=job, kind=Event.Kind.STATE, actor=actor, message=f"labels set: {text}")
    job.labels = clean
    return job


def _refuse_unless_ended(job: Job, doing: str) -> None:
    if not job.is_terminal:
        raise Conflict(
            f"Job {job.id} is {job.status}: only an ended job can be {doing}. Cancel it first "
            f"(POST /api/v1/jobs/{job.id}/cancel/, or adaptrain jobs stop {job.id}) and try "
            "again once it has ended.",
            details={"status": job.status},
        )


def job_archive(*, job: Job, actor: str, archived: bool = True) -> Job:
    """Archive an ended job (hide it from the default jobs list), or bring it back."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(id=job.id)
        if archived:
            _refuse_unless_ended(job, "archived")
        if (job.archived_at is not None) == archived:
            return job  # already so: nothing to record
        job.archived_at = timezone.now() if archived else None
        Job.objects.filter(id=job.id).update(archived_at=job.archived_at)
        event_record(
            job=job,
            kind=Event.Kind.STATE,
            actor=actor,
            message="archived" if archived else "unarchived",
        )
    return job


def job_delete(*, job: Job, actor: str) -> JobDeletion:
    """Delete an ended job with its runs, workers, events, commands, decisions, metrics and
    logs (foreign keys cascade), leaving a JobDeletion record of it."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(id=job.id)
        _refuse_unless_ended(job, "deleted")
        removed = {
            "runs": job.runs.count(),
            "events": job.events.count(),
            "metric_points": job.metric_points.count(),
            "log_lines": sum(run.log_lines.count() for run in job.runs.all()),
        }
        record = JobDeletion.objects.create(
            job_id=job.id,
            name=job.name,
            owner=job.owner.username,
            status=job.status,
            deleted_by=actor,
            removed=removed,
        )
        job_id = job.id
        job.delete()
        # A later job never reuses the id, but a browser still watching must not be
        # replayed this one's frames either.
        transaction.on_commit(lambda: channels.frame_log_reset(job_id))
    return record
