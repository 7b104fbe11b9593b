"""A job's membership: cluster versions, and what a change of members does to the job.

Every version of a run's cluster spec is written here (version 1 once the initial
workers registered their ports, later ones on a grow, a shrink or a lost member) and
pushed to the job's agents after commit. A job in ``rescaling`` goes back to
``running`` here once every member trains in the latest version, which also finishes
the ``scale_workers`` commands in flight; a job that can no longer go on fails here.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models.functions import Coalesce, Greatest, Least
from django.utils import timezone

from agent.protocol.control import StopPayload
from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.jobs import outbox, selectors
from controlplane.jobs.lifecycle import SCHEDULER, event_record, job_publish, job_transition
from controlplane.jobs.models import ClusterVersion, Command, Event, Job, Node, Run, Worker


@transaction.atomic
def workers_register(*, node: Node, job_id: int, workers: list[dict]) -> Job:
    """An agent reports the ports its workers of a job will listen on. Once every initial
    worker has one, cluster version 1 is written: the initial workers in rank order."""
    if not Worker.objects.filter(job_id=job_id, node=node).exists():
        raise NotFound(f"Job {job_id} has no workers on node {node.name}.")
    job = Job.objects.select_for_update().get(id=job_id)
    if not selectors.run_workers(job).filter(node=node).exists():
        raise Conflict(
            f"Job {job_id} has no workers on node {node.name} in its current run "
            f"(run {job.current_run.number if job.current_run_id else '—'}); these are an earlier run's."
        )
    mine = set(selectors.run_workers(job).filter(node=node).values_list("rank", flat=True))
    for w in workers:
        if w.get("rank") not in mine:
            raise InvalidInput(
                f"Rank {w.get('rank')!r} of job {job_id} is not placed on node {node.name}."
            )
        port = w.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidInput(f"Port {port!r} of rank {w['rank']} is not a TCP port.")
    for w in workers:
        selectors.run_workers(job).filter(node=node, rank=w["rank"]).update(port=w["port"])
    if job.cluster_version == 0:
        # Before version 1 the run's workers are all initial ones (a grow needs a version);
        # an elastic job may have been placed with fewer than workers_initial.
        initial = list(selectors.run_workers(job).select_related("node").order_by("rank"))
        if initial and all(w.port for w in initial):
            version_write(
                job,
                initial,
                actor=SCHEDULER,
                reason=f"the {len(initial)} initial worker(s) registered their ports",
            )
    return job


def version_write(job: Job, workers: list[Worker], *, actor: str, reason: str) -> ClusterVersion:
    """Write the next cluster version of the job's current run (``workers`` in rank order)
    and, after commit, push it to every agent of the job. The caller holds the job row
    lock. The run counts its versions and the fewest and most workers they had."""
    version = job.cluster_version + 1
    size = len(workers)
    current = ClusterVersion.objects.create(
        job=job,
        run_id=job.current_run_id,
        version=version,
        members=[w.address for w in workers],
        workers=[w.rank for w in workers],
        actor=actor,
        reason=reason,
    )
    Job.objects.filter(id=job.id).update(cluster_version=version, workers_current=size)
    Run.objects.filter(id=job.current_run_id).update(
        cluster_version=version,
        workers_min_seen=Least(Coalesce("workers_min_seen", size), size),
        workers_max_seen=Greatest(Coalesce("workers_max_seen", size), size),
    )
    job.cluster_version, job.workers_current = version, len(workers)
    event_record(
        job=job,
        kind=Event.Kind.STATE,
        actor=actor,
        message=f"cluster version {version}: {len(workers)} worker(s) — {reason}",
        data={
            "cluster_version": version,
            "members": current.members,
            "workers": current.workers,
            "reason": reason,
        },
    )
    if version > 1:
        transaction.on_commit(lambda: outbox.cluster_push(job.id))
    transaction.on_commit(lambda: job_publish(job.id))
    return current


def rescaling_start(job: Job, *, actor: str, reason: str) -> None:
    if job.status == Job.Status.RUNNING:
        job_transition(
            job,
            to=Job.Status.RESCALING,
            allowed_from=(Job.Status.RUNNING,),
            actor=actor,
            reason=reason,
        )


def grow_maybe_admit(job: Job) -> None:
    """When no joiner is still starting, let the warm standbys in: a new version with the
    current members in order, then the standbys by number."""
    workers = selectors.run_workers(job)
    if workers.filter(state=Worker.State.JOINING).exists():
        return
    standbys = list(
        workers.filter(state=Worker.State.STANDBY).select_related("node").order_by("rank")
    )
    if not standbys or job.is_terminal:
        return
    command = (
        selectors.run_commands(job)
        .filter(type=Command.Type.SCALE_WORKERS, state__in=Command.IN_FLIGHT)
        .order_by("-seq")
        .first()
    )
    actor = command.issued_by if command else SCHEDULER
    members = selectors.job_members(job)
    Worker.objects.filter(id__in=[w.id for w in standbys]).update(state=Worker.State.RUNNING)
    version_write(
        job,
        members + standbys,
        actor=actor,
        reason=f"worker(s) {', '.join(str(w.rank) for w in standbys)} join as warm standbys "
        f"(growing from {len(members)} to {len(members) + len(standbys)})",
    )


def scale_commands_finish(
    job: Job, *, step: int | None, paused_s: float | None, error: str = ""
) -> None:
    """Finish the job's in-flight scale_workers commands: applied when the job has the size
    they asked for, failed otherwise (with ``error`` when given, which also fails them)."""
    size = job.workers_current
    reason = error
    commands = list(
        selectors.run_commands(job)
        .filter(type=Command.Type.SCALE_WORKERS, state__in=Command.IN_FLIGHT)
        .order_by("seq", "id")
    )
    by_seq: dict[int, list[Command]] = {}
    for command in commands:
        by_seq.setdefault(command.seq, []).append(command)
    for rows in by_seq.values():
        target = rows[0].payload.get("value")
        ok = target == size and not reason
        error = (
            ""
            if ok
            else reason
            or f"the job has {size} worker(s), not {target}: a worker failed during the change"
        )
        Command.objects.filter(id__in=[c.id for c in rows]).update(
            state=Command.State.APPLIED if ok else Command.State.FAILED,
            applied_step=step if ok else None,
            error=error,
            finished_at=timezone.now(),
        )
        pause = f" (training paused {paused_s:.2f} s)" if ok and paused_s is not None else ""
        event_record(
            job=job,
            kind=Event.Kind.COMMAND,
            actor=SCHEDULER,
            message=(
                f"scale_workers {target} applied at step {step}{pause}"
                if ok
                else f"scale_workers {target} failed: {error}"
            ),
            data={
                "command": rows[0].id,
                "type": Command.Type.SCALE_WORKERS,
                "payload": rows[0].payload,
                "state": Command.State.APPLIED if ok else Command.State.FAILED,
                "paused_s": paused_s,
            },
            step=step if ok else None,
        )


def rescale_maybe_finish(
    job: Job, *, step: int | None = None, paused_s: float | None = None
) -> None:
    """Back to running once no joiner is pending and every member of the latest version
    reported training in it."""
    if job.status != Job.Status.RESCALING:
        return
    if (
        selectors.run_workers(job)
        .filter(state__in=[Worker.State.JOINING, Worker.State.STANDBY])
        .exists()
    ):
        return
    members = selectors.job_members(job)
    # The initial workers train in version 1 without reporting ``rescaled`` (0 means 1
    # for them; a joiner is never a member of version 1), so a grow from version 1 whose
    # joiners all failed ends here too.
    if any(max(w.cluster_version, 1) < job.cluster_version for w in members):
        return
    job_transition(
        job,
        to=Job.Status.RUNNING,
        allowed_from=(Job.Status.RESCALING,),
        actor=SCHEDULER,
        reason=f"{len(members)} worker(s) train in cluster version {job.cluster_version}",
    )
    scale_commands_finish(job, step=step, paused_s=paused_s)


def job_fail_and_stop(job: Job, *, actor: str, reason: str) -> None:
    """Fail the job and have every agent still running its workers terminate them (they
    may be waiting for a cluster version that will not come)."""
    moved = job_transition(
        job,
        to=Job.Status.FAILED,
        allowed_from=tuple(s for s in Job.Status.values if s not in Job.TERMINAL),
        actor=actor,
        reason=reason,
        finished_at=timezone.now(),
    )
    if moved:
        nodes = selectors.job_active_nodes(job)
        if nodes:
            outbox.commands_create(
                job=job,
                nodes=nodes,
                type=Command.Type.STOP,
                payload=StopPayload(terminate=True, reason=reason).to_dict(),
                issued_by=actor,
            )
        scale_commands_finish(job, step=None, paused_s=None)


def members_lost(job: Job, lost: list[Worker], *, actor: str, reason: str) -> None:
    """Members of the job died (worker crash, node lost). An elastic job that keeps at
    least workers_min continues in a new version without them; otherwise it fails."""
    lost_ids = {w.id for w in lost}
    Worker.objects.filter(id__in=lost_ids).update(state=Worker.State.FAILED)
    if job.is_terminal:
        return
    survivors = [w for w in selectors.job_members(job) if w.id not in lost_ids]
    if job.status not in (Job.Status.RUNNING, Job.Status.RESCALING) or not survivors:
        job_fail_and_stop(job, actor=actor, reason=reason)
        return
    if not job.is_elastic:
        job_fail_and_stop(
            job, actor=actor, reason=f"{reason}; the job is not elastic (workers min = max)"
        )
        return
    if len(survivors) < job.workers_min:
        job_fail_and_stop(
            job,
            actor=actor,
            reason=f"{reason}; only {len(survivors)} worker(s) would remain, "
            f"below the job's workers min of {job.workers_min}",
        )
        return
    rescaling_start(
        job, actor=actor, reason=f"{reason}; continuing with {len(survivors)} worker(s)"
    )
    version_write(
        job,
        survivors,
        actor=actor,
        reason=f"{reason}; the {len(survivors)} survivor(s) continue without it",
    )
