"""Nodes (agents): enrolment with a join token for a node credential, heartbeats (which
also tell which of the agent's jobs it should end, and fail the jobs a restarted agent
lost), and nodes lost for want of heartbeats, whose jobs shrink without them or fail."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from controlplane.accounts import credentials
from controlplane.celery import enqueue
from controlplane.errors import AuthenticationFailed
from controlplane.jobs import selectors
from controlplane.jobs.lifecycle import SCHEDULER, job_transition
from controlplane.jobs.models import Command, Job, JoinToken, Node, Worker
from controlplane.jobs.services import membership

# jobs/tasks.py: place queued jobs, then grow elastic ones back (also a beat sweep).
PLACE_PENDING_JOBS_TASK = "jobs.place_pending_jobs"


def join_token_create(*, label: str = "", created_by=None, ttl: timedelta | None = None) -> str:
    secret = credentials.new_secret("join")
    JoinToken.objects.create(
        label=label,
        token_hash=credentials.digest(secret),
        created_by=created_by,
        expires_at=timezone.now() + ttl if ttl else None,
    )
    return secret


@transaction.atomic
def node_enrol(
    *, join_token: str, name: str, address: str, slots: int, labels: dict[str, str]
) -> tuple[Node, str]:
    """Exchange a join token for a per-node credential (returned once, stored hashed).

    Re-enrolling a name replaces that node's credential: an agent that lost its state
    directory comes back as the same node.
    """
    token = (
        JoinToken.objects.filter(token_hash=credentials.digest(join_token), revoked=False)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        .first()
    )
    if token is None:
        raise AuthenticationFailed(
            "The join token is unknown, revoked or expired; ask an admin "
            "for a new one (manage.py create_join_token)."
        )
    credential = credentials.new_secret("node")
    node, _ = Node.objects.update_or_create(
        name=name,
        defaults={
            "address": address,
            "slots": slots,
            "labels": labels,
            "credential_hash": credentials.digest(credential),
            "status": Node.Status.ONLINE,
            "last_heartbeat": timezone.now(),
        },
    )
    return node, credential


def node_authenticate(credential: str) -> Node | None:
    if not credential:
        return None
    return Node.objects.filter(credential_hash=credentials.digest(credential)).first()


def node_heartbeat(*, node: Node, running_jobs: list[int] | None = None) -> list[int]:
    """Record that the node is alive. ``running_jobs``, when given, is the set of jobs whose
    workers the agent runs now: a job the agent started (its start command applied) but no
    longer runs lost its workers — the agent restarted — and fails with that reason.

    Returns the jobs among ``running_jobs`` the agent should end there: those whose
    current run has no worker on this node that is not failed — the node was taken for
    lost while its agent was away and the job shrank without it or failed, or the job was
    restarted as a new run. Nothing else would stop those workers (durable stop commands
    go to nodes with active workers); they would train on, unseen."""
    now = timezone.now()
    Node.objects.filter(id=node.id).update(last_heartbeat=now, status=Node.Status.ONLINE)
    if node.status != Node.Status.ONLINE:
        # A node back online may make room for queued jobs: place them now, not at the sweep.
        transaction.on_commit(lambda: enqueue(PLACE_PENDING_JOBS_TASK))
    if running_jobs is None:
        return []
    release = _jobs_to_release(node, running_jobs)
    # Workers of an earlier run of a job the agent no longer runs are gone with it (the
    # agent finished them without a report that reached us, or restarted).
    (
        Worker.objects.filter(node=node, state__in=Worker.ACTIVE)
        .exclude(run_id=F("job__current_run_id"))
        .exclude(job_id__in=running_jobs)
        .update(state=Worker.State.FAILED)
    )
    # The agent took the job on once it applied the start command or reported workers
    # (a joiner's standby); workers that left or failed no longer tie the job to this node.
    # Only the job's current run counts.
    current = Q(run_id=F("job__current_run_id"))
    active = Worker.objects.filter(current, node=node, state__in=Worker.ACTIVE).values("job_id")
    started = Command.objects.filter(
        current, node=node, type=Command.Type.START, state=Command.State.APPLIED
    ).values("job_id")
    reported = Worker.objects.filter(
        current, node=node, state__in=[Worker.State.RUNNING, Worker.State.STANDBY]
    ).values("job_id")
    orphaned = (
        Job.objects.filter(id__in=active)
        .filter(Q(id__in=started) | Q(id__in=reported))
        .exclude(status__in=Job.TERMINAL)
        .exclude(id__in=running_jobs)
    )
    for job in orphaned:
        with transaction.atomic():
            moved = job_transition(
                job,
                to=Job.Status.FAILED,
                allowed_from=tuple(s for s in Job.Status.values if s not in Job.TERMINAL),
                actor=f"node:{node.name}",
                finished_at=timezone.now(),
                reason=f"the agent on node {node.name} no longer runs this job's workers (it restarted)",
            )
            if moved:
                selectors.run_workers(job).filter(node=node, state__in=Worker.ACTIVE).update(
                    state=Worker.State.FAILED
                )
    return release


def _jobs_to_release(node: Node, running_jobs: list[int]) -> list[int]:
    """See node_heartbeat. A job with a current worker here in any state but failed is
    kept: active ones, and those that left or exited, whose processes may still be on
    their way out (a finished or cancelled job's end is the agent's, or a stop command's)."""
    if not running_jobs:
        return []
    kept = set(
        Worker.objects.filter(node=node, job_id__in=running_jobs, run_id=F("job__current_run_id"))
        .exclude(state=Worker.State.FAILED)
        .values_list("job_id", flat=True)
    )
    return sorted(set(running_jobs) - kept)


def nodes_mark_lost(*, timeout_s: float) -> list[int]:
    """Nodes silent for longer than ``timeout_s`` become lost. An elastic job running there
    shrinks by that node's workers when at least workers_min remain; other jobs fail."""
    cutoff = timezone.now() - timedelta(seconds=timeout_s)
    lost = []
    for node in Node.objects.filter(status=Node.Status.ONLINE, last_heartbeat__lt=cutoff):
        with transaction.atomic():
            if (
                Node.objects.filter(
                    id=node.id, status=Node.Status.ONLINE, last_heartbeat__lt=cutoff
                ).update(status=Node.Status.LOST)
                != 1
            ):
                continue
            lost.append(node.id)
            reason = f"node {node.name} lost (no heartbeat for {timeout_s:.0f} s)"
            job_ids = (
                Job.objects.filter(workers__node=node, workers__state__in=Worker.ACTIVE)
                .exclude(status__in=Job.TERMINAL)
                .values_list("id", flat=True)
                .distinct()
            )
            for job_id in sorted(job_ids):
                job = Job.objects.select_for_update().get(id=job_id)
                gone_all = list(Worker.objects.filter(job=job, node=node, state__in=Worker.ACTIVE))
                Worker.objects.filter(id__in=[w.id for w in gone_all]).update(
                    state=Worker.State.FAILED
                )
                gone = [w for w in gone_all if w.run_id == job.current_run_id]
                if not gone:
                    continue  # only an earlier run's workers were there
                member_ids = {w.id for w in selectors.job_members(job)}
                members_gone = [w for w in gone if w.id in member_ids]
                if members_gone or job.cluster_version == 0:
                    membership.members_lost(job, members_gone, actor=SCHEDULER, reason=reason)
                else:  # only joiners were there
                    membership.grow_maybe_admit(job)
                    membership.rescale_maybe_finish(job)
            Worker.objects.filter(node=node, state__in=Worker.ACTIVE).update(
                state=Worker.State.FAILED
            )
    return lost
