"""What agents report about their part of a job: the job running, succeeded, failed or
stopped on their node (REST), and what one of their workers said or did about the
job's membership (relayed on /ws/agent/).

Reports about a run that is no longer the job's current one (a straggler of a restarted
job) only update that run's workers, never the job.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from agent.protocol.control import ExitedEvent, WorkerEvent
from agent.protocol.worker import LeftLine, PeerFailedLine, RescaledLine, StandbyLine
from controlplane.errors import InvalidInput, NotFound
from controlplane.jobs import selectors
from controlplane.jobs.lifecycle import event_record, job_transition
from controlplane.jobs.models import Command, Event, Job, Node, Worker
from controlplane.jobs.services import membership


@transaction.atomic
def job_worker_report(*, node: Node, job_id: int, rank: int, event: WorkerEvent) -> None:
    """An agent relays what one of its workers said or did (agent → control plane), as the
    typed event of its ``worker`` frame (:class:`agent.protocol.control.WorkerFrame`):

    * ``standby`` (``address``): a joiner is ready; once every joiner is, they are let in
      by a new cluster version;
    * ``rescaled`` (``version``, ``step``, ``paused_s``): it trains in that version; once
      every member does, the job is running again and ``scale_workers`` is applied;
    * ``left`` (``version``, ``step``): it was removed and exited cleanly;
    * ``peer_failed`` (``version``, ``error``): it waits for a version without a dead peer;
    * ``exited`` (``code``, ``error``): it died while the job is elastic — the job goes on
      without it if it can (see membership.members_lost).
    """
    if not Worker.objects.filter(job_id=job_id, node=node, rank=rank).exists():
        raise NotFound(f"Job {job_id} has no worker {rank} on node {node.name}.")
    job = Job.objects.select_for_update().get(id=job_id)
    worker = selectors.run_workers(job).select_related("node").filter(node=node, rank=rank).first()
    if worker is None:
        _earlier_run_worker_report(job, node=node, rank=rank, event=event)
        return
    actor = f"node:{node.name}"
    match event:
        case StandbyLine(address=address):
            if worker.state != Worker.State.JOINING:
                return  # a repeat, or a joiner given up on
            if worker.address is not None and address != worker.address:
                raise InvalidInput(
                    f"Worker {rank} of job {job_id} listens on {worker.address}, not {address!r}."
                )
            Worker.objects.filter(id=worker.id).update(state=Worker.State.STANDBY)
            membership.grow_maybe_admit(job)
            membership.rescale_maybe_finish(job)
        case RescaledLine(version=version, step=step, paused_s=paused_s):
            if version > worker.cluster_version:
                Worker.objects.filter(id=worker.id).update(cluster_version=version)
            membership.rescale_maybe_finish(job, step=step, paused_s=float(paused_s))
        case LeftLine(step=step):
            Worker.objects.filter(id=worker.id, state__in=Worker.ACTIVE).update(
                state=Worker.State.LEFT
            )
            membership.rescale_maybe_finish(job, step=step)
        case PeerFailedLine(version=version, error=error):
            event_record(
                job=job,
                kind=Event.Kind.STATE,
                actor=actor,
                message=f"worker {rank}: a peer failed in cluster version {version}; waiting for "
                f"the next version ({error[:300]})",
                data={"worker": rank, "cluster_version": version, "event": event.TYPE},
            )
        case ExitedEvent(code=code, error=error):
            _worker_exited(job, worker, actor=actor, code=code, error=error[:1500])


def _worker_exited(job: Job, worker: Worker, *, actor: str, code: int | None, error: str) -> None:
    reason = f"worker {worker.rank} on node {worker.node.name} exited with code {code}" + (
        f": {error}" if error else ""
    )
    if worker.state not in Worker.ACTIVE:
        return
    if worker.state in (Worker.State.JOINING, Worker.State.STANDBY):
        Worker.objects.filter(id=worker.id).update(state=Worker.State.FAILED)
        event_record(
            job=job,
            kind=Event.Kind.STATE,
            actor=actor,
            message=f"joiner {reason}; the others join without it",
            data={"worker": worker.rank},
        )
        membership.grow_maybe_admit(job)
        membership.rescale_maybe_finish(job)
    elif any(w.id == worker.id for w in selectors.job_members(job)):
        membership.members_lost(job, [worker], actor=actor, reason=reason)
    else:  # removed already; it died on its way out
        Worker.objects.filter(id=worker.id).update(state=Worker.State.FAILED)


def _earlier_run_worker_report(job: Job, *, node: Node, rank: int, event: WorkerEvent) -> None:
    """A worker of an earlier run of the job (a straggler the agent still runs after a
    restart) left or exited: note it on the worker; the job's current run is unaffected."""
    outcome = {LeftLine: Worker.State.LEFT, ExitedEvent: Worker.State.FAILED}.get(type(event))
    if outcome is not None:
        (
            Worker.objects.filter(job=job, node=node, rank=rank, state__in=Worker.ACTIVE)
            .exclude(run_id=job.current_run_id)
            .update(state=outcome)
        )


def job_report(
    *, node: Node, job_id: int, status: str, reason: str = "", workers: list[dict] | None = None
) -> None:
    """An agent reports its part of a job: running (with worker ports), succeeded, failed or
    stopped. With ``stopped`` or ``succeeded``, ``workers`` may tell what became of workers
    that left (``{"rank", "state": "left"}``) or died while the job went on
    (``{"rank", "state": "failed", "code", "error"}``); they count as the ``left`` and
    ``exited`` worker events, which the agent may also have relayed on /ws/agent/ (this
    report comes after them either way, before the agent forgets the job)."""
    if not Worker.objects.filter(job_id=job_id, node=node).exists():
        raise NotFound(f"Job {job_id} has no workers on node {node.name}.")
    if status not in ("running", "succeeded", "failed", "stopped"):
        raise InvalidInput(
            f"Unknown job status {status!r}; use running, succeeded, failed or stopped."
        )
    with transaction.atomic():
        job = Job.objects.select_for_update().get(id=job_id)
        actor = f"node:{node.name}"
        if not selectors.run_workers(job).filter(node=node).exists():
            # The node's workers are an earlier run's (a report that crossed a restart):
            # they are done with, and the job's current run is not this node's business.
            if status != "running":
                (
                    Worker.objects.filter(job=job, node=node, state__in=Worker.ACTIVE).update(
                        state=Worker.State.FAILED if status == "failed" else Worker.State.EXITED
                    )
                )
            return
        if status == "running":
            for w in workers or []:
                selectors.run_workers(job).filter(node=node, rank=w["rank"]).update(
                    port=w.get("port"), state=w.get("state", Worker.State.RUNNING)
                )
            job_transition(
                job,
                to=Job.Status.RUNNING,
                allowed_from=(Job.Status.SCHEDULING,),
                actor=actor,
                started_at=timezone.now(),
            )
            return
        for w in workers or []:
            outcome = w.get("state")
            if outcome == Worker.State.LEFT:
                version = (
                    selectors.run_workers(job)
                    .filter(node=node, rank=w["rank"])
                    .values_list("cluster_version", flat=True)
                    .first()
                )
                event: WorkerEvent = LeftLine(version=version or 0)
                job_worker_report(node=node, job_id=job.id, rank=w["rank"], event=event)
            elif outcome == Worker.State.FAILED:
                event = ExitedEvent(code=w.get("code"), error=w.get("error", ""))
                job_worker_report(node=node, job_id=job.id, rank=w["rank"], event=event)
        job.refresh_from_db()
        mine = selectors.run_workers(job).filter(node=node, state__in=Worker.ACTIVE)
        if status == "succeeded":
            mine.update(state=Worker.State.EXITED)
            job_transition(
                job,
                to=Job.Status.SUCCEEDED,
                allowed_from=(Job.Status.SCHEDULING, Job.Status.RUNNING, Job.Status.RESCALING),
                actor=actor,
                reason=reason,
                finished_at=timezone.now(),
            )
        elif status == "failed":
            mine.update(state=Worker.State.FAILED)
            job_transition(
                job,
                to=Job.Status.FAILED,
                allowed_from=(Job.Status.SCHEDULING, Job.Status.RUNNING, Job.Status.RESCALING),
                actor=actor,
                reason=reason or "a worker failed",
                finished_at=timezone.now(),
            )
        else:  # stopped
            mine.update(state=Worker.State.EXITED)
            membership.grow_maybe_admit(job)
            membership.rescale_maybe_finish(job)
            _stopped_maybe_succeed(job, actor=actor)


def _stopped_maybe_succeed(job: Job, *, actor: str) -> None:
    """A job a user or a policy stopped (the ``stop`` action; not a cancel, not the stop
    that ends abandoned joiners) ends ``succeeded`` once none of its workers is left: its
    workers stopped training cleanly at the step they agreed on (e.g. a policy's early
    stop). Without this it would stay ``running`` with nothing running."""
    job.refresh_from_db()
    if job.is_terminal or selectors.run_workers(job).filter(state__in=Worker.ACTIVE).exists():
        return
    stop = (
        selectors.run_commands(job)
        .filter(type=Command.Type.STOP)
        .exclude(payload__has_key="joiners")
        .order_by("seq")
        .first()
    )
    if stop is None:
        return
    applied = (
        selectors.run_commands(job)
        .filter(seq=stop.seq, state=Command.State.APPLIED)
        .exclude(applied_step=None)
        .values_list("applied_step", flat=True)
        .first()
    )
    at = f" at step {applied}" if applied is not None else ""
    job_transition(
        job,
        to=Job.Status.SUCCEEDED,
        allowed_from=(Job.Status.SCHEDULING, Job.Status.RUNNING, Job.Status.RESCALING),
        actor=actor,
        reason=f"stopped by {stop.issued_by}{at}",
        finished_at=timezone.now(),
    )
