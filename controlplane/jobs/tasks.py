"""Celery tasks for placement and node liveness. Each task is idempotent: it checks
that its work is still needed and calls one service. Services queue them by name
(``controlplane.celery.enqueue``); only this module imports the services."""

import logging
import time
from datetime import datetime

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from controlplane.jobs.models import Job
from controlplane.jobs.services import commands, elastic, nodes, scheduling

log = logging.getLogger(__name__)

# mark_lost_nodes' memory (one worker process; the devstack's pool is threads): the last
# check that reached the database, the first that did not since, and the last outage.
_last_mark_lost_ok: float | None = None  # monotonic
_db_down_since: float | None = None  # monotonic
_last_outage: tuple[float, datetime] | None = None  # (its length in s, when it ended)


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
    """Silence is measured while the control plane could see: time its database was down
    (this task found it unreachable) is blind time, never a node's silence. A worker
    process with no history grants one full timeout (it cannot know what came before).

    Only a database error is evidence of an outage. A late check alone is not: Celery
    busy or the machine loaded delays the schedule while the web server still records
    every heartbeat, and counting such a gap as blind time (as an earlier version did)
    kept a dead node online for minutes."""
    global _last_mark_lost_ok, _db_down_since, _last_outage
    now, wall = time.monotonic(), timezone.now()
    timeout_s = settings.AGENT_HEARTBEAT_TIMEOUT_S
    if _last_mark_lost_ok is None and _db_down_since is None:
        blind_s, blind_until = timeout_s, None
    else:
        if _db_down_since is not None:
            # The outage began at the last check that succeeded (or, with none, at the
            # first that failed) and ended now.
            began = _last_mark_lost_ok if _last_mark_lost_ok is not None else _db_down_since
            _last_outage = (now - began, wall)
        blind_s, blind_until = (0.0, None) if _last_outage is None else _last_outage
    try:
        lost = nodes.nodes_mark_lost(
            timeout_s=timeout_s,
            grace_s=settings.NODE_LOST_GRACE_S,
            blind_s=blind_s,
            blind_until=blind_until,
        )
    except (OperationalError, InterfaceError) as exc:
        if _db_down_since is None:
            _db_down_since = now
            log.warning("cannot check node liveness, the database is unreachable: %s", exc)
        return
    _last_mark_lost_ok, _db_down_since = now, None
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
