"""Read-only queries over jobs, their runs, workers, cluster versions and commands, and
nodes: what users may see (``*_visible_to``, ``*_for_user``), and what the services and
the agents' endpoints read of a job's current run.

A job executes as runs (attempts): workers, cluster versions and commands belong to the
job's current run (``Job.current_run``), so most reads here are scoped to it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, NamedTuple

from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from controlplane.errors import NotFound
from controlplane.jobs import placement
from controlplane.jobs.models import (
    ClusterVersion,
    Command,
    Event,
    Job,
    JoinToken,
    Node,
    Run,
    Worker,
)


def jobs_visible_to(user) -> QuerySet[Job]:
    qs = Job.objects.select_related("owner", "policy", "current_run").prefetch_related(
        "workers__node"
    )
    return qs if user.is_staff else qs.filter(owner=user)


def job_get_for_user(*, user, job_id: int) -> Job:
    job = jobs_visible_to(user).filter(id=job_id).first()
    if job is None:
        # Someone else's job answers exactly like a missing one: ids leak nothing.
        raise NotFound(f"Job {job_id} does not exist or is not yours.")
    return job


def job_get_for_node(*, node: Node, job_id: int) -> Job:
    """A job with workers (of any of its runs) on ``node``: what an agent may read."""
    job = Job.objects.filter(id=job_id, workers__node=node).distinct().first()
    if job is None:
        raise NotFound(f"Job {job_id} has no workers on this node.")
    return job


def node_may_read_bundle(*, node: Node, digest: str) -> bool:
    """Whether ``node`` runs (or is about to start) workers of an unfinished job whose code is
    bundle ``digest``: the only bundles an agent may download."""
    return (
        Job.objects.filter(bundle_digest=digest, workers__node=node)
        .exclude(status__in=Job.TERMINAL)
        .exists()
    )


def job_commands(job: Job) -> QuerySet[Command]:
    return Command.objects.filter(job=job).select_related("node").order_by("seq", "id")


def job_runs(job: Job) -> QuerySet[Run]:
    """The job's runs, newest first."""
    return Run.objects.filter(job=job).order_by("-number")


def job_run_get(job: Job, number: int | None) -> Run | None:
    """Run ``number`` of the job (1-based), or its current run when ``number`` is None
    (None: the job has not been placed yet). An unknown number is a 404 that lists the
    runs there are."""
    if number is None:
        return job.current_run
    run = Run.objects.filter(job=job, number=number).first()
    if run is None:
        numbers = list(
            Run.objects.filter(job=job).order_by("number").values_list("number", flat=True)
        )
        there = (
            f"its runs are {', '.join(str(n) for n in numbers)}"
            if numbers
            else "it has no runs yet (it has not been placed)"
        )
        raise NotFound(
            f"Job {job.id} has no run {number}; {there}.", details={"run": number, "runs": numbers}
        )
    return run


def job_events(job: Job, *, after_id: int | None = None, run: Run | None = None) -> QuerySet[Event]:
    """The job's events, oldest first; only run ``run``'s when given."""
    qs = Event.objects.filter(job=job).select_related("run").order_by("id")
    if run is not None:
        qs = qs.filter(run=run)
    return qs.filter(id__gt=after_id) if after_id else qs


def nodes_all() -> QuerySet[Node]:
    """The enrolled nodes (not deleted), by name, each with ``workers_active``: how many
    workers run (or are starting) there."""
    return (
        Node.objects.enrolled()
        .annotate(workers_active=Count("workers", filter=Q(workers__state__in=Worker.ACTIVE)))
        .order_by("name")
    )


def node_standing(node_id: int) -> str | None:
    """The node's status now, or None once it was deleted (its credential no longer works)."""
    return Node.objects.enrolled().filter(id=node_id).values_list("status", flat=True).first()


def join_tokens_all() -> QuerySet[JoinToken]:
    """Join tokens, newest first, with their creator and the nodes enrolled with them."""
    return JoinToken.objects.select_related("created_by").prefetch_related("nodes").order_by("-id")


def job_cluster_members(job: Job) -> list[int]:
    """Worker numbers of the latest cluster version of the job's current run, in rank order."""
    current = job_cluster_version(job)
    return list(current.workers) if current is not None else []


def job_cluster_versions(job: Job) -> QuerySet[ClusterVersion]:
    """The cluster versions of the job's current run."""
    return ClusterVersion.objects.filter(run_id=job.current_run_id).order_by("version")


# --- the job's current run ---------------------------------------------------------------


def run_workers(job: Job) -> QuerySet[Worker]:
    """The workers of the job's current run (none before the job is first placed)."""
    return Worker.objects.filter(run_id=job.current_run_id)


def run_commands(job: Job) -> QuerySet[Command]:
    """The commands of the job's current run."""
    return Command.objects.filter(run_id=job.current_run_id)


def run_stop_command(job: Job) -> Command | None:
    """The stop of the whole job issued in its current run (by a user, a policy or the
    control plane), unless the nodes could not carry it out; None when none was. A stop
    that only ends abandoned joiners does not count."""
    return (
        run_commands(job)
        .filter(type=Command.Type.STOP)
        .exclude(payload__has_key="joiners")
        .exclude(state__in=[Command.State.FAILED, Command.State.EXPIRED])
        .order_by("seq")
        .first()
    )


def job_cluster_version(job: Job) -> ClusterVersion | None:
    """The latest cluster version of the job's current run (None before version 1)."""
    if not job.cluster_version:
        return None
    return ClusterVersion.objects.filter(
        run_id=job.current_run_id, version=job.cluster_version
    ).first()


def job_members(job: Job) -> list[Worker]:
    """The workers of the job's latest cluster version, in rank order, with their nodes."""
    current = job_cluster_version(job)
    if current is None:
        return []
    by_rank = {
        w.rank: w for w in run_workers(job).filter(rank__in=current.workers).select_related("node")
    }
    return [by_rank[r] for r in current.workers]


def job_active_nodes(job: Job) -> list[Node]:
    """Nodes that run (or are starting) workers of the job's current run."""
    return list(
        Node.objects.filter(workers__run_id=job.current_run_id, workers__state__in=Worker.ACTIVE)
        .distinct()
        .order_by("id")
    )


def cluster_spec(*, job: Job) -> dict[str, Any]:
    """The rendezvous and the membership: the job's latest cluster version, or — before
    every initial worker has reported its port — the addresses known so far."""
    current = job_cluster_version(job)
    if current is not None:
        return {
            "job": job.id,
            "version": current.version,
            "world_size": len(current.members),
            "complete": True,
            "members": list(current.members),
            "workers_min": job.workers_min,
        }
    # Before version 1 the run's workers are all initial ones (a grow needs a version).
    workers = list(run_workers(job).select_related("node").order_by("rank"))
    return {
        "job": job.id,
        "version": 0,
        "world_size": len(workers),
        "complete": False,
        "members": [w.address for w in workers],
        "workers_min": job.workers_min,
    }


# --- nodes and their commands -----------------------------------------------------------


def node_capacities(nodes: dict[int, Node]) -> list[placement.NodeCapacity]:
    """What placement needs to know of ``nodes`` (id → node): free slots, labels and the
    kinds of code each runs."""
    busy = dict(
        Worker.objects.filter(node_id__in=nodes, state__in=Worker.ACTIVE)
        .order_by()
        .values_list("node_id")
        .annotate(n=Count("id"))
    )
    return [
        placement.NodeCapacity(
            node_id=n.id,
            free_slots=n.slots - busy.get(n.id, 0),
            labels=n.labels or {},
            code_kinds=frozenset(n.code_kinds or ()),
        )
        for n in nodes.values()
    ]


def commands_unfinished_for_node(
    node: Node, *, unacked_for_s: float | None = None
) -> list[Command]:
    """What to (re)deliver to a node that connects: its unfinished commands, but no start
    of a job that ended or of a run that is no longer its job's current one.

    With ``unacked_for_s``: only those still unacknowledged that long after they were
    created (pending) or last sent — what a connected agent should have acked by now, so
    the push was lost (Redis down, or the agent's group gone with a restarted Redis)."""
    unfinished = Command.objects.filter(
        node=node, state__in=[Command.State.PENDING, Command.State.SENT]
    )
    if unacked_for_s is not None:
        cutoff = timezone.now() - timedelta(seconds=unacked_for_s)
        unfinished = unfinished.filter(
            Q(state=Command.State.PENDING, created_at__lt=cutoff)
            | Q(state=Command.State.SENT, sent_at__lt=cutoff)
        )
    return list(
        unfinished.exclude(job__status__in=Job.TERMINAL, type=Command.Type.START)
        .exclude(~Q(run_id=F("job__current_run_id")), type=Command.Type.START)
        .order_by("job_id", "seq")
    )


# --- checkpoints -------------------------------------------------------------------------


def checkpoint_path(checkpoint_dir: str, step: int) -> str:
    """Where the runtime writes the checkpoint of ``step`` (agent.runtime.Trainer.checkpoint)."""
    return f"{checkpoint_dir.rstrip('/')}/step-{step:09d}"


def job_latest_checkpoint(job: Job) -> tuple[str, int] | None:
    """The checkpoint the job's workers wrote last, as (folder, step), or None. The runtime
    reports a ``checkpoint_step`` metric each time rank 0 has written one under the job's
    ``checkpoint_dir`` hyper-parameter; the newest report of the latest run that made one
    wins (a run restarted from scratch writes lower steps than the one before it, and its
    are the ones to use). Run by run, newest first: each is one scan of the per-run index.

    The points are read through the run's ``metric_points`` relation: the metrics app
    that stores them sits above jobs, so jobs reads its rows without importing it."""
    directory = job.hyperparameters.get("checkpoint_dir")
    if not directory:
        return None
    for run in Run.objects.filter(job=job).order_by("-number").only("id"):
        point = (
            run.metric_points.filter(name="checkpoint_step")
            .order_by("-time", "-id")
            .values_list("value", flat=True)
            .first()
        )
        if point is not None:
            return checkpoint_path(directory, int(point)), int(point)
    return None


class ReportingRun(NamedTuple):
    id: int
    number: int
    current: bool  # the job's current run


def runs_reporting(node: Node, job_ids: set[int]) -> dict[int, ReportingRun]:
    """Job id → the run whose workers on ``node`` report for that job (its metric points,
    its log lines), for the jobs with workers on the node (one query for all of them).

    That is the job's current run. Only a node that holds no worker of the current run
    but still runs workers of an earlier one (a straggler the agent has not stopped yet
    after a restart) reports for that earlier run (its latest), so its last points and
    lines never land in the new run's."""
    found: dict[int, ReportingRun] = {}
    rows = (
        Worker.objects.filter(node=node, job_id__in=job_ids)
        .values_list("job_id", "run_id", "run__number", "job__current_run_id")
        .distinct()
    )
    for job_id, run_id, number, current_run_id in rows:
        candidate = ReportingRun(run_id, number, run_id == current_run_id)
        best = found.get(job_id)
        if (
            best is None
            or candidate.current
            or (not best.current and candidate.number > best.number)
        ):
            found[job_id] = candidate
    return found


# The list's sort keys (``ordering``): the public name → the model fields, ties by id.
JOB_ORDERINGS = {
    "created": ("created_at", "id"),
    "name": ("name", "id"),
    "status": ("status", "id"),
    "step": ("last_step", "id"),
}


def jobs_search(
    *,
    user,
    text: str = "",
    statuses: list[str] | None = None,
    owner: str = "",
    node: str = "",
    ordering: str = "-created",
    archived: bool | None = False,
) -> QuerySet[Job]:
    """The jobs ``user`` may see that match every filter given: ``text`` in the name or a
    label's name or value (case-insensitive; ``label=value`` matches that label exactly),
    archived or not (``archived``; None: both), a status in ``statuses``, owned by ``owner`` (a username), with a
    worker (of any run) on node ``node``; sorted by an ``ordering`` key of JOB_ORDERINGS,
    descending with a leading ``-``. The caller checks the values."""
    qs = jobs_visible_to(user)
    if text:
        label, sep, value = text.partition("=")
        if sep and label.strip():
            qs = qs.filter(labels__contains={label.strip(): value.strip()})
        else:
            qs = qs.filter(Q(name__icontains=text) | Q(labels__icontains=text))
    if archived is not None:
        qs = qs.filter(archived_at__isnull=not archived)
    if statuses:
        qs = qs.filter(status__in=statuses)
    if owner:
        qs = qs.filter(owner__username=owner)
    if node:
        qs = qs.filter(id__in=Worker.objects.filter(node__name=node).values("job_id"))
    descending = ordering.startswith("-")
    fields = JOB_ORDERINGS[ordering.lstrip("-")]
    return qs.order_by(*(f"-{f}" if descending else f for f in fields))
