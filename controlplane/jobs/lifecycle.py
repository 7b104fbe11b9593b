"""The one place a job's status changes, and the audit events and live pushes that go
with every change.

A status transition is a conditional update (``filter(status__in=allowed).update``), so
concurrent callers (web requests, Celery tasks, agent messages) cannot both win; it is
mirrored onto the job's current run, recorded as an event and, after the transaction
commits, pushed to the browsers watching the job.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Subquery

from controlplane.jobs.models import Event, Job, Run
from controlplane.live import channels

# The actor of what the control plane does on its own (placement, grows back, give-ups).
SCHEDULER = "scheduler"


def job_snapshot(job: Job) -> dict[str, Any]:
    """The job's status and knobs, as a ``job`` frame on /ws/jobs/{id}/ carries them."""
    return {
        "id": job.id,
        "status": job.status,
        "status_reason": job.status_reason,
        "batch_size": job.batch_size,
        "lr": job.learning_rate,
        "workers": job.workers_current,
        "strategy": job.strategy,
        "topology": job.topology,
        "step": job.last_step,
        "cluster_version": job.cluster_version,
    }


def job_publish(job_id: int) -> None:
    """Push the job's stored state to its browsers (call it after commit)."""
    job = Job.objects.get(id=job_id)
    channels.publish_to_job(job_id, channels.FRAME_JOB, job_snapshot(job))


def event_record(
    *,
    job: Job,
    kind: str,
    actor: str,
    message: str,
    data: dict | None = None,
    step: int | None = None,
) -> Event:
    """Append an event to the job's audit log (under its current run as stored now) and
    push it to the job's browsers after commit."""
    # The current run as stored now: the caller's copy of the job may predate a restart.
    run_id, run_number = Job.objects.filter(id=job.id).values_list(
        "current_run_id", "current_run__number"
    ).first() or (None, None)
    event = Event.objects.create(
        job=job, run_id=run_id, kind=kind, actor=actor, message=message, data=data or {}, step=step
    )
    frame = {
        "id": event.id,
        "run": run_number,
        "kind": kind,
        "actor": actor,
        "message": message,
        "data": event.data,
        "step": step,
        "time": event.created_at.isoformat(),
    }
    transaction.on_commit(lambda: channels.publish_to_job(job.id, channels.FRAME_EVENT, frame))
    return event


def job_transition(
    job: Job, *, to: str, allowed_from: tuple[str, ...], actor: str, reason: str = "", **fields: Any
) -> bool:
    """Move a job to ``to`` if it is in one of ``allowed_from``; return whether it moved.

    This is the one place a job's status changes, so it is also where the change is
    mirrored onto the job's current run (after the update, so a transition that makes a
    new run current — a restart — mirrors onto the new run): its status and reason, the
    start and finish times the transition sets, and the job's step at that moment."""
    updated = Job.objects.filter(id=job.id, status__in=allowed_from).update(
        status=to, status_reason=reason, **fields
    )
    if updated != 1:
        return False
    run_fields = {name: fields[name] for name in ("started_at", "finished_at") if name in fields}
    Run.objects.filter(current_of__id=job.id).update(
        status=to,
        status_reason=reason,
        **run_fields,
        last_step=Subquery(Job.objects.filter(id=job.id).values("last_step")[:1]),
    )
    message = f"{job.status} → {to}" + (f": {reason}" if reason else "")
    job.status = to
    for name, value in fields.items():
        setattr(job, name, value)
    event_record(job=job, kind=Event.Kind.STATE, actor=actor, message=message, data={"status": to})
    transaction.on_commit(lambda: job_publish(job.id))
    return True
