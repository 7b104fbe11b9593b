"""Celery tasks for placement and node liveness. Each task is idempotent: it checks
that its work is still needed and calls one service. Services queue them by name
(``controlplane.celery.enqueue``); only this module imports the services."""

import logging
import time

from celery import shared_task
from django.conf import settings

from controlplane.jobs.models import Job
from controlplane.jobs.services import commands, elastic, nodes, scheduling

log = logging.getLogger(__name__)

MARK_LOST_INTERVAL_S = 10.0  # the beat schedule of jobs.mark_lost_nodes (settings.py)
_last_mark_lost_ok: float | None = None
_last_outage: tuple[float, float] | None = None  # (length, when it ended), monotonic


@shared_task(name="jobs.place_job", acks_late=True, time_limit=60)
def place_job(job_id: int) -> None:
    if not Job.objects.filter(id=job_id, status=Job.Status.PENDING).exists():
        log.info("job %s is not pending; nothing to place", job_id)
        return
    if not scheduling.job_place(job_id=job_id):
        log.info("job %s does not fit on any online node yet; it stays queued", job_id)


@shared_task(name="jobs.place_pending_jobs", acks_late=True, time_limit=120)
def place_pending_jobs() -> None:
    """Place queued jobs, then grow running elastic jobs back to their wanted size with
    what is left (elastic.jobs_grow_to_wanted)."""
    for job_id in (
        Job.objects.filter(status=Job.Status.PENDING).order_by("id").values_list("id", flat=True)
    ):
        scheduling.job_place(job_id=job_id)
    grown = elastic.jobs_grow_to_wanted(delay_s=settings.AUTO_GROW_DELAY_S)
    if grown:
        log.info("growing job(s) %s back towards their wanted size", grown)


@shared_task(name="jobs.mark_lost_nodes", acks_late=True, time_limit=60)
def mark_lost_nodes() -> None:
    # Silence is measured after the database was last reachable: a gap between two
    # successful checks longer than the schedule (the control plane's own outage) is
    # added to the timeout; a worker process with no history grants one full timeout.
    global _last_mark_lost_ok, _last_outage
    now = time.monotonic()
    timeout_s = settings.AGENT_HEARTBEAT_TIMEOUT_S
    if _last_mark_lost_ok is None:
        blind_s = timeout_s
    else:
        # A gap longer than the schedule is an outage of the control plane (its database):
        # its whole length is blind time, and stays so while a node's silence may still
        # span it (a node's last heartbeat may be from just before it, its next one a few
        # seconds after it). Only the gap beyond two schedules, and only at the first
        # check after it, once counted: an outage of 30 s then made nodes unreachable with
        # a short AGENT_HEARTBEAT_TIMEOUT_S (tests/faults/test_database_outage.py).
        gap_s = now - _last_mark_lost_ok
        if gap_s > 1.5 * MARK_LOST_INTERVAL_S:
            _last_outage = (gap_s, now)
        blind_s = 0.0
        if _last_outage is not None:
            length_s, ended = _last_outage
            if now - ended < timeout_s + settings.NODE_LOST_GRACE_S + length_s:
                blind_s = length_s
    lost = nodes.nodes_mark_lost(
        timeout_s=timeout_s, grace_s=settings.NODE_LOST_GRACE_S, blind_s=blind_s
    )
    _last_mark_lost_ok = now
    if lost:
        log.warning("nodes lost: %s", lost)


@shared_task(name="jobs.expire_commands", acks_late=True, time_limit=60)
def expire_commands() -> None:
    expired = commands.commands_expire(ttl_s=settings.COMMAND_TTL_S)
    if expired:
        log.warning("%d command(s) expired unacknowledged", expired)


@shared_task(name="jobs.expire_joiners", acks_late=True, time_limit=60)
def expire_joiners() -> None:
    concerned = elastic.joiners_expire(timeout_s=settings.RESCALE_JOIN_TIMEOUT_S)
    if concerned:
        log.warning("gave up on joiners that never reported standby in job(s) %s", concerned)
