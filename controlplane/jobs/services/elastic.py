"""Elastic jobs: ``scale_workers`` (grow by warm standbys, shrink by the highest ranks),
joiners given up on, and grows back to the size a job is wanted at.

A grow places joiners on nodes with free slots and sends every node of the job the
``scale_workers`` command, with a ``join`` (the same start payload as a job's start, see
``outbox.join_payload``) for the nodes that start joiners; the joiners report
``standby`` and are let in by a new cluster version (``membership.grow_maybe_admit``).
A shrink writes the smaller version at once.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Max
from django.utils import timezone

from agent.protocol.control import ScalePayload, StopPayload
from controlplane.errors import ApiError, Conflict, InvalidInput
from controlplane.jobs import outbox, placement, selectors
from controlplane.jobs.lifecycle import SCHEDULER, event_record
from controlplane.jobs.models import Command, Event, Job, Node, Worker
from controlplane.jobs.services import membership

log = logging.getLogger(__name__)


def job_scale(
    job: Job, *, value: Any, issued_by: str, idempotency_key: str | None
) -> list[Command]:
    """``scale_workers``: grow by warm standbys or shrink by the highest ranks. The caller
    holds the job row lock. See reports.job_worker_report for how a grow completes."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"scale_workers needs an integer number of workers; got {value!r}.")
    if not job.is_elastic:
        raise InvalidInput(
            f"Job {job.id} is not elastic (workers min = max = {job.workers_min}), so scale_workers is not "
            "supported for it; create the job with workers.min < workers.max to scale it.",
            details={"workers": {"min": job.workers_min, "max": job.workers_max}},
        )
    if job.status == Job.Status.RESCALING:
        raise Conflict(
            f"Job {job.id} is rescaling (cluster version {job.cluster_version}); "
            "scale it again once it is running."
        )
    if job.status != Job.Status.RUNNING:
        raise Conflict(f"Job {job.id} is {job.status}; scale_workers needs a running job.")
    if not job.workers_min <= value <= job.workers_max:
        raise InvalidInput(
            f"scale_workers needs a value from {job.workers_min} to {job.workers_max} (the job's workers "
            f"min and max); got {value}.",
            details={"value": value, "workers": {"min": job.workers_min, "max": job.workers_max}},
        )
    members = selectors.job_members(job)
    if not members:
        raise Conflict(f"Job {job.id} has no cluster version yet; scale it once it is running.")
    if value == len(members):
        raise InvalidInput(f"Job {job.id} already has {value} worker(s).")
    # A stop that ends abandoned joiners (joiners_expire) does not hold the job up.
    busy = (
        selectors.run_commands(job)
        .filter(state__in=Command.IN_FLIGHT)
        .exclude(type=Command.Type.STOP, payload__has_key="joiners")
        .order_by("seq")
        .first()
    )
    if busy is not None:
        raise Conflict(
            f"Command {busy.id} ({busy.type}) of job {job.id} is still in flight; "
            "scale the job once it is applied."
        )
    size = len(members)
    if issued_by != SCHEDULER:
        # What a user or a policy asks for is the size the scheduler keeps the job at (it
        # grows it back after a crash or a lost node). A scale refused below (409) rolls
        # back with the rest of command_issue's transaction, so it changes nothing.
        Job.objects.filter(id=job.id).update(workers_wanted=value)
    if value < size:
        leaving = members[value:]
        membership.rescaling_start(
            job, actor=issued_by, reason=f"shrinking from {size} to {value} workers"
        )
        commands = outbox.commands_create(
            job=job,
            nodes=selectors.job_active_nodes(job),
            type=Command.Type.SCALE_WORKERS,
            payload={"value": value},
            issued_by=issued_by,
            idempotency_key=idempotency_key,
        )
        membership.version_write(
            job,
            members[:value],
            actor=issued_by,
            reason=f"scale_workers {value}: worker(s) {', '.join(str(w.rank) for w in leaving)} "
            f"leave (the highest ranks)",
        )
        return commands

    needed = value - size
    nodes = {n.id: n for n in Node.objects.schedulable().select_for_update()}
    capacities = selectors.node_capacities(nodes)
    plan = placement.plan_placement(capacities, needed, job.node_selector, job.code_kind)
    if plan is None:
        free = sum(
            max(c.free_slots, 0)
            for c in capacities
            if placement.eligible(c, job.node_selector, job.code_kind)
        )
        where = (
            f"online nodes (not draining) matching the job's node_selector "
            f"{placement.node_selector_text(job.node_selector)}"
            if job.node_selector
            else "online nodes (not draining)"
        )
        where += f" that run {job.code_kind} code (AGENT_CODE)"
        raise Conflict(
            f"Not enough free slots to grow job {job.id} from {size} to {value} workers: {needed} more "
            f"needed, {free} free on {where}. Add nodes or free slots, then try again.",
            details={"needed": needed, "free_slots": free, "node_selector": job.node_selector},
        )
    next_rank = (selectors.run_workers(job).aggregate(m=Max("rank"))["m"] or 0) + 1
    joiners: dict[int, list[tuple[int, int]]] = {}
    rows = []
    for node_id, indexes in plan.items():
        for i in indexes:
            rows.append(
                Worker(
                    job=job,
                    run_id=job.current_run_id,
                    node=nodes[node_id],
                    rank=next_rank + i,
                    state=Worker.State.JOINING,
                )
            )
            joiners.setdefault(node_id, []).append((next_rank + i, size + i))
    Worker.objects.bulk_create(rows)
    where = ", ".join(f"{nodes[node_id].name} ({len(ws)})" for node_id, ws in joiners.items())
    membership.rescaling_start(
        job,
        actor=issued_by,
        reason=f"growing from {size} to {value} workers: starting {needed} standby worker(s) on {where}",
    )
    current = selectors.job_cluster_version(job)
    return outbox.commands_create(
        job=job,
        nodes=selectors.job_active_nodes(job),
        type=Command.Type.SCALE_WORKERS,
        payload=ScalePayload(value=value).to_dict(),
        issued_by=issued_by,
        idempotency_key=idempotency_key,
        payload_for=lambda node: ScalePayload(
            value=value,
            join=outbox.join_payload(job, job.current_run, current, joiners[node.id])
            if node.id in joiners
            else None,
        ).to_dict(),
    )


def joiners_expire(*, timeout_s: float) -> list[int]:
    """Give up on joiners of a grow that have not reported ``standby`` within ``timeout_s``
    of being placed (their node never started them, or they hang). They are marked failed;
    the joiners that are ready join without them, or, when none is, the grow is abandoned
    and the job runs on at its size. The grow's scale_workers command fails with the
    reason. A ``stop`` with the abandoned joiners' numbers ends their processes: every
    node of the job gets it (the command sequence must have no gap), and each agent ends
    only the joiners listed for it.
    Returns the ids of the jobs concerned."""
    cutoff = timezone.now() - timedelta(seconds=timeout_s)
    job_ids = sorted(
        set(
            Worker.objects.filter(state=Worker.State.JOINING, created_at__lt=cutoff).values_list(
                "job_id", flat=True
            )
        )
    )
    concerned = []
    for job_id in job_ids:
        with transaction.atomic():
            job = Job.objects.select_for_update().get(id=job_id)
            stale = list(
                Worker.objects.filter(job=job, state=Worker.State.JOINING, created_at__lt=cutoff)
                .select_related("node")
                .order_by("rank")
            )
            if not stale:
                continue  # they reported meanwhile
            Worker.objects.filter(id__in=[w.id for w in stale]).update(state=Worker.State.FAILED)
            concerned.append(job.id)
            stale = [w for w in stale if w.run_id == job.current_run_id]
            if job.is_terminal or not stale:
                continue
            _joiners_abandon(job, stale, timeout_s=timeout_s)
    return concerned


def _joiners_abandon(job: Job, stale: list[Worker], *, timeout_s: float) -> None:
    """The rest of joiners_expire for one job; the caller holds its row lock and marked
    ``stale`` failed."""
    ranks = ", ".join(str(w.rank) for w in stale)
    on = ", ".join(sorted({w.node.name for w in stale}))
    reason = f"joiner(s) {ranks} on node(s) {on} did not report standby within {timeout_s:.0f} s"
    ready = selectors.run_workers(job).filter(state=Worker.State.STANDBY).count()
    still_joining = selectors.run_workers(job).filter(state=Worker.State.JOINING).count()
    size = len(selectors.job_members(job))
    if ready or still_joining:
        outcome = f"the other {ready + still_joining} joiner(s) join without them"
    else:
        outcome = f"the grow is abandoned; the job runs on with its {size} worker(s)"
    event_record(
        job=job,
        kind=Event.Kind.STATE,
        actor=SCHEDULER,
        message=f"{reason}; {outcome}",
        data={"workers": [w.rank for w in stale], "event": "join_timeout", "timeout_s": timeout_s},
    )
    # Let the ready ones in first: the new version names the grow's issuer as its actor.
    membership.grow_maybe_admit(job)
    job.refresh_from_db()
    membership.scale_commands_finish(job, step=None, paused_s=None, error=f"{reason}; {outcome}")
    membership.rescale_maybe_finish(job)
    # Every node of the job gets the stop, with the joiners it should end (maybe none):
    # workers agree on commands by a gap-free sequence, so a command only some nodes
    # received would hold up every later command on the others. Agents end just the
    # listed standby processes and pass the sequence number on to their members.
    by_node: dict[int, list[int]] = {}
    for w in stale:
        # An agent that is gone took them with it; one unreachable may come back to them.
        if w.node.status in (Node.Status.ONLINE, Node.Status.UNREACHABLE):
            by_node.setdefault(w.node_id, []).append(w.rank)
    if not by_node:
        return
    nodes = {n.id: n for n in selectors.job_active_nodes(job)}
    nodes.update({w.node_id: w.node for w in stale if w.node_id in by_node})
    stopping = "; ".join(
        f"{', '.join(map(str, ranks))} on node {nodes[node_id].name}"
        for node_id, ranks in sorted(by_node.items())
    )
    outbox.commands_create(
        job=job,
        nodes=[nodes[i] for i in sorted(nodes)],
        type=Command.Type.STOP,
        issued_by=SCHEDULER,
        payload=StopPayload(
            joiners=tuple(w.rank for w in stale if w.node_id in by_node), reason=reason
        ).to_dict(),
        payload_for=lambda node: StopPayload(
            joiners=tuple(by_node.get(node.id, [])), reason=reason
        ).to_dict(),
        message=f"stop the abandoned joiner(s) {stopping}",
    )


def jobs_grow_to_wanted(*, delay_s: float, max_delay_s: float = 600.0) -> list[int]:
    """Grow running elastic jobs that have fewer workers than wanted (placed short of room,
    or shrunk by a crashed worker or a lost node) by as many as the free slots allow, with a
    ``scale_workers`` issued by the scheduler. Only when no job is pending (queued jobs get
    free slots first), the job's membership has not changed for ``delay_s`` and no command
    of it is in flight; after grows of the scheduler's that failed in a row (e.g. joiners
    that never came) it waits ``delay_s`` · 2^failures, at most ``max_delay_s``, so a
    worker that cannot start is not retried in a tight loop. Returns the grown job ids."""
    if Job.objects.filter(status=Job.Status.PENDING).exists():
        return []
    grown = []
    now = timezone.now()
    candidates = (
        Job.objects.filter(status=Job.Status.RUNNING, workers_min__lt=F("workers_max"))
        .order_by("id")
        .values_list("id", flat=True)
    )
    for job_id in candidates:
        with transaction.atomic():
            job = Job.objects.select_for_update().get(id=job_id)
            if job.status != Job.Status.RUNNING or job.workers_current >= min(
                job.wanted_workers, job.workers_max
            ):
                continue
            latest = selectors.job_cluster_version(job)
            if latest is None or now - latest.created_at < timedelta(seconds=delay_s):
                continue
            # A command has one row per node (same seq): count commands, newest first.
            rows = (
                selectors.run_commands(job)
                .filter(type=Command.Type.SCALE_WORKERS)
                .order_by("-seq")
                .values_list("seq", "issued_by", "state", "created_at")
            )
            failed_in_a_row, last_try, seen = 0, None, set()
            for seq, issued_by, state, created_at in rows:
                if seq in seen:
                    continue
                seen.add(seq)
                last_try = last_try or created_at
                if issued_by != SCHEDULER or state != Command.State.FAILED:
                    break
                failed_in_a_row += 1
            wait = min(delay_s * 2**failed_in_a_row, max_delay_s)
            if last_try is not None and now - last_try < timedelta(seconds=wait):
                continue
            nodes = {n.id: n for n in Node.objects.schedulable()}
            free = sum(
                max(c.free_slots, 0)
                for c in selectors.node_capacities(nodes)
                if placement.eligible(c, job.node_selector, job.code_kind)
            )
            value = min(job.wanted_workers, job.workers_max, job.workers_current + free)
            if value <= job.workers_current:
                continue
            try:
                job_scale(job, value=value, issued_by=SCHEDULER, idempotency_key=None)
            except ApiError as exc:  # e.g. a command still in flight: try again at the next sweep
                log.info("job %s: not grown to %s now: %s", job.id, value, exc)
                continue
            event_record(
                job=job,
                kind=Event.Kind.STATE,
                actor=SCHEDULER,
                message=f"growing back towards the {job.wanted_workers} worker(s) wanted: "
                f"{job.workers_current} → {value} ({free} free slot(s))",
                data={
                    "event": "grow_to_wanted",
                    "from": job.workers_current,
                    "to": value,
                    "wanted": job.wanted_workers,
                },
            )
            grown.append(job.id)
    return grown
