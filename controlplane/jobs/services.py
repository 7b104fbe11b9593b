"""Every write to jobs and their runs, nodes, workers, commands and events.

State transitions are guarded by conditional updates so that concurrent callers
(web requests, Celery tasks, agent messages) cannot both win; pushes to browsers and
agents run after the transaction commits.

A job executes as runs (attempts): workers, cluster versions and commands belong to the
job's current run, and what agents report about a run that is no longer current (a
straggler of a restarted job) only updates that run's workers, never the job.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Max, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Greatest, Least
from django.utils import timezone

from agent.runtime.scaling import scaled_lr
from controlplane.celery import enqueue
from controlplane.errors import ApiError, AuthenticationFailed, Conflict, InvalidInput, NotFound
from controlplane.jobs import credentials, placement
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
from controlplane.live import channels
from controlplane.live.models import MetricPoint

log = logging.getLogger(__name__)

# Entrypoints the agent knows how to start (module run with ``python -m``).
# The actor of what the control plane does on its own (placement, grows back, give-ups).
SCHEDULER = "scheduler"

ENTRYPOINTS = {
    "examples.digits": "examples.digits.train",
    "examples.synthetic_cnn": "examples.synthetic_cnn.train",
}


def job_snapshot(job: Job) -> dict[str, Any]:
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


def _run_workers(job: Job) -> QuerySet[Worker]:
    """The workers of the job's current run (none before the job is first placed)."""
    return Worker.objects.filter(run_id=job.current_run_id)


def _run_commands(job: Job) -> QuerySet[Command]:
    return Command.objects.filter(run_id=job.current_run_id)


def _publish_job(job_id: int) -> None:
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


def _transition(
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
    transaction.on_commit(lambda: _publish_job(job.id))
    return True


# --- jobs --------------------------------------------------------------------------------

NODE_SELECTOR_MAX_ENTRIES = 20
NODE_SELECTOR_MAX_KEY = 100
NODE_SELECTOR_MAX_VALUE = 200  # as a node label's value at enrolment


def node_selector_clean(raw: Any) -> dict[str, str]:
    """A job's node selector: a flat object of label → value (strings), at most
    NODE_SELECTOR_MAX_ENTRIES pairs. Raises InvalidInput saying what to fix."""
    if raw is None:
        return {}
    example = 'such as {"gpu": "a100", "zone": "eu-1"}'
    if not isinstance(raw, dict):
        raise InvalidInput(
            f"node_selector must be an object of label → value strings, {example}; "
            f"got {type(raw).__name__}.",
            details={"node_selector": raw},
        )
    if len(raw) > NODE_SELECTOR_MAX_ENTRIES:
        raise InvalidInput(
            f"node_selector may have at most {NODE_SELECTOR_MAX_ENTRIES} labels; got {len(raw)}.",
            details={"node_selector": sorted(raw)},
        )
    for key, value in raw.items():
        if not 1 <= len(key) <= NODE_SELECTOR_MAX_KEY or not key.isprintable():
            raise InvalidInput(
                f"node_selector label names must be 1 to {NODE_SELECTOR_MAX_KEY} printable "
                f"characters; got {key!r}.",
                details={"node_selector": key},
            )
        if not isinstance(value, str):
            raise InvalidInput(
                f"node_selector[{key!r}] must be a string (labels are flat label → value "
                f"strings, {example}); got {json_type(value)}.",
                details={"node_selector": key},
            )
        if not 1 <= len(value) <= NODE_SELECTOR_MAX_VALUE or not value.isprintable():
            raise InvalidInput(
                f"node_selector[{key!r}] must be 1 to {NODE_SELECTOR_MAX_VALUE} printable "
                f"characters; got {value!r}.",
                details={"node_selector": key},
            )
    return dict(raw)


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _selector_text(node_selector: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(node_selector.items()))


@transaction.atomic
def job_create(
    *,
    owner,
    name: str,
    entrypoint: str,
    hyperparameters: dict[str, Any],
    workers_initial: int,
    workers_min: int,
    workers_max: int,
    strategy: str,
    topology: str,
    policy=None,
    node_selector: dict[str, str] | None = None,
) -> Job:
    if entrypoint not in ENTRYPOINTS:
        raise InvalidInput(
            f"Unknown entrypoint {entrypoint!r}; available: {', '.join(sorted(ENTRYPOINTS))}.",
            details={"entrypoint": sorted(ENTRYPOINTS)},
        )
    if not workers_min <= workers_initial <= workers_max:
        raise InvalidInput(
            "Workers must satisfy min ≤ initial ≤ max.",
            details={
                "workers": {"min": workers_min, "initial": workers_initial, "max": workers_max}
            },
        )
    node_selector = node_selector_clean(node_selector)
    job = Job.objects.create(
        owner=owner,
        name=name,
        entrypoint=entrypoint,
        hyperparameters=hyperparameters,
        workers_initial=workers_initial,
        workers_min=workers_min,
        workers_max=workers_max,
        strategy=strategy,
        topology=topology,
        policy=policy,
        node_selector=node_selector,
        policy_version=policy.version if policy is not None else None,
        batch_size=int(hyperparameters["batch_size"]),
        learning_rate=float(hyperparameters["lr"]),
    )
    # Before the first frame of the job is published (event_record's push runs on commit too).
    transaction.on_commit(lambda: channels.frame_log_reset(job.id))
    event_record(
        job=job,
        kind=Event.Kind.STATE,
        actor=f"user:{owner.username}",
        message="created",
        data={"status": job.status},
    )
    from controlplane.jobs.tasks import place_job

    transaction.on_commit(lambda: enqueue(place_job, job.id))
    return job


def _free_slots(node: Node) -> int:
    busy = Worker.objects.filter(node=node, state__in=Worker.ACTIVE).count()
    return node.slots - busy


def _capacities(nodes: dict[int, Node]) -> list[placement.NodeCapacity]:
    return [
        placement.NodeCapacity(node_id=n.id, free_slots=_free_slots(n), labels=n.labels or {})
        for n in nodes.values()
    ]


def _pending_reason(job: Job) -> str:
    """Why a job with a node selector is not placed: no enrolled node (in any status) could
    ever hold it, or the nodes that could are offline or busy now."""
    selector = _selector_text(job.node_selector)
    matching = [
        n for n in Node.objects.all() if placement.labels_match(n.labels or {}, job.node_selector)
    ]
    if not matching:
        return (
            f"no enrolled node has labels matching node_selector {selector}; the job stays pending "
            f"until a node with those labels enrols"
        )
    slots = sum(n.slots for n in matching)
    needed = _fewest_to_start(job)
    if slots < needed:
        return (
            f"the nodes whose labels match node_selector {selector} have {slots} slot(s) in all, fewer "
            f"than the {needed} worker(s) the job starts with at least; the job stays pending until "
            f"more such nodes enrol"
        )
    return f"waiting for {_slots_text(job)} on online nodes matching node_selector {selector}"


def _slots_text(job: Job) -> str:
    needed = _fewest_to_start(job)
    if needed < job.workers_initial:
        return f"{needed} free slot(s) (it starts with up to {job.workers_initial} worker(s), at least {needed})"
    return f"{needed} free slot(s)"


def _fewest_to_start(job: Job) -> int:
    """An elastic job starts with as many of its initial workers as fit, at least its
    minimum (and grows to the rest later); any other job with all of them."""
    return job.workers_min if job.is_elastic else job.workers_initial


def _pending_reason_record(job: Job, *, busy_nodes: dict[str, int] | None = None) -> None:
    """Record why a job with a node selector, or a restarted job whose earlier run still
    holds nodes, waits, once per change of reason (the sweep retries every few seconds).
    Another job waits silently as before."""
    if not job.node_selector and not busy_nodes:
        return
    reason = (
        _pending_reason(job)
        if job.node_selector
        else (f"waiting for {_slots_text(job)} on online nodes")
    )
    if busy_nodes:
        held = ", ".join(f"{name} (run {number})" for name, number in sorted(busy_nodes.items()))
        reason += f"; not on {held}, which still run(s) workers of an earlier run of the job"
    if reason == job.status_reason:
        return
    if Job.objects.filter(id=job.id, status=Job.Status.PENDING).update(status_reason=reason) != 1:
        return
    job.status_reason = reason
    event_record(
        job=job,
        kind=Event.Kind.STATE,
        actor="scheduler",
        message=f"pending: {reason}",
        data={"status": job.status, "reason": reason, "node_selector": job.node_selector},
    )
    transaction.on_commit(lambda: _publish_job(job.id))


def _run_hyperparameters(job: Job, run: Run) -> dict[str, Any]:
    """The hyper-parameters a run's workers start with: the job's, with ``resume_from``
    the checkpoint the run resumes from (none: from scratch)."""
    hyperparameters = {k: v for k, v in job.hyperparameters.items() if k != "resume_from"}
    if run.resumed_from:
        hyperparameters["resume_from"] = run.resumed_from
    return hyperparameters


def _run_first(job: Job) -> Run:
    """Run 1, made by the job's first placement; the caller holds the job row lock."""
    resumed_from = job.hyperparameters.get("resume_from") or ""
    number = (Run.objects.filter(job=job).aggregate(m=Max("number"))["m"] or 0) + 1
    return Run.objects.create(
        job=job,
        number=number,
        created_by="scheduler",
        reason="the job's first placement",
        resumed_from=resumed_from,
        resume_note=(
            "resumes from the checkpoint the job names (hyper-parameter resume_from)"
            if resumed_from
            else "trains from scratch"
        ),
    )


def _nodes_busy_with_earlier_runs(job: Job) -> dict[int, int]:
    """Node id → run number, for nodes that still run workers of an earlier run of the
    job. Their agents know the job by its id only and ignore a start for a job they still
    run, so a new run waits for them to finish rather than go there."""
    rows = (
        Worker.objects.filter(job=job, state__in=Worker.ACTIVE)
        .exclude(run_id=job.current_run_id)
        .values_list("node_id", "run__number")
    )
    return dict(rows)


def job_place(*, job_id: int) -> bool:
    """Place a pending job's workers on online nodes with free slots whose labels match the
    job's node selector (see placement.py) and send each node a start command for its
    ranks. Returns whether the job was placed; a job that fits nowhere stays pending (with
    the reason recorded when it has a node selector) and the periodic sweep retries it.

    The first placement makes run 1; a restarted job (job_restart) already has its new
    run, pending, and that run is placed. Nodes still running workers of an earlier run
    of the job are left out (see _nodes_busy_with_earlier_runs)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(id=job_id).first()
        if job is None or job.status != Job.Status.PENDING:
            return False
        nodes = {
            n.id: n for n in Node.objects.select_for_update().filter(status=Node.Status.ONLINE)
        }
        busy = _nodes_busy_with_earlier_runs(job)
        capacities = [c for c in _capacities(nodes) if c.node_id not in busy]
        # All the initial workers; an elastic job short of room starts with as many as fit,
        # at least its minimum, and is grown to the rest when slots free up.
        size, plan = job.workers_initial, None
        while plan is None and size >= _fewest_to_start(job):
            plan = placement.plan_placement(capacities, size, job.node_selector)
            size -= plan is None
        if plan is None:
            _pending_reason_record(
                job, busy_nodes={nodes[n].name: r for n, r in busy.items() if n in nodes}
            )
            return False
        run = job.current_run if job.current_run_id else None
        first = run is None or run.status != Run.Status.PENDING
        if first:
            run = _run_first(job)
        Worker.objects.bulk_create(
            [
                Worker(job=job, run=run, node=nodes[node_id], rank=r)
                for node_id, ranks in plan.items()
                for r in ranks
            ]
        )
        where = ", ".join(
            f"{nodes[node_id].name} (ranks {ranks[0]}–{ranks[-1]})"
            if len(ranks) > 1
            else f"{nodes[node_id].name} (rank {ranks[0]})"
            for node_id, ranks in plan.items()
        )
        short = (
            f" ({job.workers_initial} wanted; there was no room for more, it grows when slots free up)"
            if size < job.workers_initial
            else ""
        )
        _transition(
            job,
            to=Job.Status.SCHEDULING,
            allowed_from=(Job.Status.PENDING,),
            actor="scheduler",
            reason=f"run {run.number}: placed {size} worker(s) on {where}{short}",
            workers_current=size,
            **({"current_run": run} if first else {}),
        )
        payload = {
            "job": job.id,
            "entrypoint": ENTRYPOINTS[job.entrypoint],
            "hyperparameters": _run_hyperparameters(job, run),
            "batch_size": job.batch_size,
            "lr": job.learning_rate,
            "strategy": job.strategy,
            "topology": job.topology,
            "world_size": size,
            "cluster_version": 1,
            "workers_min": job.workers_min,
        }
        _command_create(
            job=job,
            nodes=[nodes[node_id] for node_id in plan],
            type=Command.Type.START,
            payload=payload,
            issued_by="scheduler",
            payload_for=lambda node: {**payload, "ranks": plan[node.id]},
        )
    return True


def cluster_spec(*, job: Job) -> dict[str, Any]:
    """The rendezvous and the membership: the job's latest cluster version, or — before
    every initial worker has reported its port — the addresses known so far."""
    current = _current_version(job)
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
    workers = list(_run_workers(job).select_related("node").order_by("rank"))
    return {
        "job": job.id,
        "version": 0,
        "world_size": len(workers),
        "complete": False,
        "members": [w.address for w in workers],
        "workers_min": job.workers_min,
    }


@transaction.atomic
def workers_register(*, node: Node, job_id: int, workers: list[dict]) -> Job:
    """An agent reports the ports its workers of a job will listen on. Once every initial
    worker has one, cluster version 1 is written: the initial workers in rank order."""
    if not Worker.objects.filter(job_id=job_id, node=node).exists():
        raise NotFound(f"Job {job_id} has no workers on node {node.name}.")
    job = Job.objects.select_for_update().get(id=job_id)
    if not _run_workers(job).filter(node=node).exists():
        raise Conflict(
            f"Job {job_id} has no workers on node {node.name} in its current run "
            f"(run {job.current_run.number if job.current_run_id else '—'}); these are an earlier run's."
        )
    mine = set(_run_workers(job).filter(node=node).values_list("rank", flat=True))
    for w in workers:
        if w.get("rank") not in mine:
            raise InvalidInput(
                f"Rank {w.get('rank')!r} of job {job_id} is not placed on node {node.name}."
            )
        port = w.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidInput(f"Port {port!r} of rank {w['rank']} is not a TCP port.")
    for w in workers:
        _run_workers(job).filter(node=node, rank=w["rank"]).update(port=w["port"])
    if job.cluster_version == 0:
        # Before version 1 the run's workers are all initial ones (a grow needs a version);
        # an elastic job may have been placed with fewer than workers_initial.
        initial = list(_run_workers(job).select_related("node").order_by("rank"))
        if initial and all(w.port for w in initial):
            _version_write(
                job,
                initial,
                actor="scheduler",
                reason=f"the {len(initial)} initial worker(s) registered their ports",
            )
    return job


# --- cluster versions and rescaling -----------------------------------------------------


def _current_version(job: Job) -> ClusterVersion | None:
    if not job.cluster_version:
        return None
    return ClusterVersion.objects.filter(
        run_id=job.current_run_id, version=job.cluster_version
    ).first()


def _members(job: Job) -> list[Worker]:
    """The workers of the job's latest cluster version, in rank order."""
    current = _current_version(job)
    if current is None:
        return []
    by_rank = {
        w.rank: w for w in _run_workers(job).filter(rank__in=current.workers).select_related("node")
    }
    return [by_rank[r] for r in current.workers]


def _active_nodes(job: Job) -> list[Node]:
    """Nodes that run (or are starting) workers of the job's current run."""
    return list(
        Node.objects.filter(workers__run_id=job.current_run_id, workers__state__in=Worker.ACTIVE)
        .distinct()
        .order_by("id")
    )


def cluster_frame(version: ClusterVersion, *, workers_min: int) -> dict[str, Any]:
    """What an agent receives on /ws/agent/ when a job's membership changes; it forwards
    ``{"type": "cluster", "version", "members"}`` to the job's workers (agent.protocol)."""
    return {
        "type": "cluster",
        "job": version.job_id,
        "version": version.version,
        "members": list(version.members),
        "workers": list(version.workers),
        "workers_min": workers_min,
    }


def _push_cluster(job_id: int) -> None:
    job = Job.objects.get(id=job_id)
    current = _current_version(job)
    if current is None or job.is_terminal:
        return
    frame = cluster_frame(current, workers_min=job.workers_min)
    for node in _active_nodes(job):
        channels.push_command_to_agent(node.id, frame)


def cluster_frames_for_node(node: Node) -> list[dict[str, Any]]:
    """The latest version of every live job with workers on the node (sent again when its
    agent reconnects; agents ignore versions they already have)."""
    jobs = (
        Job.objects.filter(
            workers__node=node,
            workers__state__in=Worker.ACTIVE,
            cluster_version__gte=2,
            workers__run_id=F("current_run_id"),
        )
        .exclude(status__in=Job.TERMINAL)
        .distinct()
    )
    frames = []
    for job in jobs:
        current = _current_version(job)
        if current is not None:
            frames.append(cluster_frame(current, workers_min=job.workers_min))
    return frames


def _version_write(job: Job, workers: list[Worker], *, actor: str, reason: str) -> ClusterVersion:
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
        transaction.on_commit(lambda: _push_cluster(job.id))
    transaction.on_commit(lambda: _publish_job(job.id))
    return current


def _start_rescaling(job: Job, *, actor: str, reason: str) -> None:
    if job.status == Job.Status.RUNNING:
        _transition(
            job,
            to=Job.Status.RESCALING,
            allowed_from=(Job.Status.RUNNING,),
            actor=actor,
            reason=reason,
        )


def _job_scale(
    job: Job, *, value: Any, issued_by: str, idempotency_key: str | None
) -> list[Command]:
    """``scale_workers``: grow by warm standbys or shrink by the highest ranks. The caller
    holds the job row lock. See job_worker_report for how a grow completes."""
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
    members = _members(job)
    if not members:
        raise Conflict(f"Job {job.id} has no cluster version yet; scale it once it is running.")
    if value == len(members):
        raise InvalidInput(f"Job {job.id} already has {value} worker(s).")
    # A stop that ends abandoned joiners (joiners_expire) does not hold the job up.
    busy = (
        _run_commands(job)
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
        _start_rescaling(job, actor=issued_by, reason=f"shrinking from {size} to {value} workers")
        commands = _command_create(
            job=job,
            nodes=_active_nodes(job),
            type=Command.Type.SCALE_WORKERS,
            payload={"value": value},
            issued_by=issued_by,
            idempotency_key=idempotency_key,
        )
        _version_write(
            job,
            members[:value],
            actor=issued_by,
            reason=f"scale_workers {value}: worker(s) {', '.join(str(w.rank) for w in leaving)} "
            f"leave (the highest ranks)",
        )
        return commands

    needed = value - size
    nodes = {n.id: n for n in Node.objects.select_for_update().filter(status=Node.Status.ONLINE)}
    capacities = _capacities(nodes)
    plan = placement.plan_placement(capacities, needed, job.node_selector)
    if plan is None:
        free = sum(
            max(c.free_slots, 0)
            for c in capacities
            if placement.labels_match(c.labels, job.node_selector)
        )
        where = (
            f"online nodes matching the job's node_selector {_selector_text(job.node_selector)}"
            if job.node_selector
            else "online nodes"
        )
        raise Conflict(
            f"Not enough free slots to grow job {job.id} from {size} to {value} workers: {needed} more "
            f"needed, {free} free on {where}. Add nodes or free slots, then try again.",
            details={"needed": needed, "free_slots": free, "node_selector": job.node_selector},
        )
    next_rank = (_run_workers(job).aggregate(m=Max("rank"))["m"] or 0) + 1
    joiners: dict[int, list[dict]] = {}
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
            joiners.setdefault(node_id, []).append(
                {"rank": next_rank + i, "cluster_rank": size + i}
            )
    Worker.objects.bulk_create(rows)
    where = ", ".join(f"{nodes[node_id].name} ({len(ws)})" for node_id, ws in joiners.items())
    _start_rescaling(
        job,
        actor=issued_by,
        reason=f"growing from {size} to {value} workers: starting {needed} standby worker(s) on {where}",
    )
    current = _current_version(job)
    join = {
        "cluster_version": current.version,
        "members": list(current.members),
        "workers_min": job.workers_min,
        "entrypoint": ENTRYPOINTS[job.entrypoint],
        "hyperparameters": _run_hyperparameters(job, job.current_run),
        "batch_size": job.batch_size,
        "lr": job.learning_rate,
        "strategy": job.strategy,
        "topology": job.topology,
    }
    return _command_create(
        job=job,
        nodes=_active_nodes(job),
        type=Command.Type.SCALE_WORKERS,
        payload={"value": value},
        issued_by=issued_by,
        idempotency_key=idempotency_key,
        payload_for=lambda node: (
            {"value": value, "join": {**join, "workers": joiners[node.id]}}
            if node.id in joiners
            else {"value": value}
        ),
    )


def _grow_maybe_admit(job: Job) -> None:
    """When no joiner is still starting, let the warm standbys in: a new version with the
    current members in order, then the standbys by number."""
    workers = _run_workers(job)
    if workers.filter(state=Worker.State.JOINING).exists():
        return
    standbys = list(
        workers.filter(state=Worker.State.STANDBY).select_related("node").order_by("rank")
    )
    if not standbys or job.is_terminal:
        return
    command = (
        _run_commands(job)
        .filter(type=Command.Type.SCALE_WORKERS, state__in=Command.IN_FLIGHT)
        .order_by("-seq")
        .first()
    )
    actor = command.issued_by if command else "scheduler"
    members = _members(job)
    Worker.objects.filter(id__in=[w.id for w in standbys]).update(state=Worker.State.RUNNING)
    _version_write(
        job,
        members + standbys,
        actor=actor,
        reason=f"worker(s) {', '.join(str(w.rank) for w in standbys)} join as warm standbys "
        f"(growing from {len(members)} to {len(members) + len(standbys)})",
    )


def _scale_commands_finish(
    job: Job, *, step: int | None, paused_s: float | None, error: str = ""
) -> None:
    """Finish the job's in-flight scale_workers commands: applied when the job has the size
    they asked for, failed otherwise (with ``error`` when given, which also fails them)."""
    size = job.workers_current
    reason = error
    commands = list(
        _run_commands(job)
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
            actor="scheduler",
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


def _rescale_maybe_finish(
    job: Job, *, step: int | None = None, paused_s: float | None = None
) -> None:
    """Back to running once no joiner is pending and every member of the latest version
    reported training in it."""
    if job.status != Job.Status.RESCALING:
        return
    if _run_workers(job).filter(state__in=[Worker.State.JOINING, Worker.State.STANDBY]).exists():
        return
    members = _members(job)
    # The initial workers train in version 1 without reporting ``rescaled`` (0 means 1
    # for them; a joiner is never a member of version 1), so a grow from version 1 whose
    # joiners all failed ends here too.
    if any(max(w.cluster_version, 1) < job.cluster_version for w in members):
        return
    _transition(
        job,
        to=Job.Status.RUNNING,
        allowed_from=(Job.Status.RESCALING,),
        actor="scheduler",
        reason=f"{len(members)} worker(s) train in cluster version {job.cluster_version}",
    )
    _scale_commands_finish(job, step=step, paused_s=paused_s)


def _job_fail_and_stop(job: Job, *, actor: str, reason: str) -> None:
    """Fail the job and have every agent still running its workers terminate them (they
    may be waiting for a cluster version that will not come)."""
    moved = _transition(
        job,
        to=Job.Status.FAILED,
        allowed_from=tuple(s for s in Job.Status.values if s not in Job.TERMINAL),
        actor=actor,
        reason=reason,
        finished_at=timezone.now(),
    )
    if moved:
        nodes = _active_nodes(job)
        if nodes:
            _command_create(
                job=job,
                nodes=nodes,
                type=Command.Type.STOP,
                payload={"terminate": True, "reason": reason},
                issued_by=actor,
            )
        _scale_commands_finish(job, step=None, paused_s=None)


def _members_lost(job: Job, lost: list[Worker], *, actor: str, reason: str) -> None:
    """Members of the job died (worker crash, node lost). An elastic job that keeps at
    least workers_min continues in a new version without them; otherwise it fails."""
    lost_ids = {w.id for w in lost}
    Worker.objects.filter(id__in=lost_ids).update(state=Worker.State.FAILED)
    if job.is_terminal:
        return
    survivors = [w for w in _members(job) if w.id not in lost_ids]
    if job.status not in (Job.Status.RUNNING, Job.Status.RESCALING) or not survivors:
        _job_fail_and_stop(job, actor=actor, reason=reason)
        return
    if not job.is_elastic:
        _job_fail_and_stop(
            job, actor=actor, reason=f"{reason}; the job is not elastic (workers min = max)"
        )
        return
    if len(survivors) < job.workers_min:
        _job_fail_and_stop(
            job,
            actor=actor,
            reason=f"{reason}; only {len(survivors)} worker(s) would remain, "
            f"below the job's workers min of {job.workers_min}",
        )
        return
    _start_rescaling(
        job, actor=actor, reason=f"{reason}; continuing with {len(survivors)} worker(s)"
    )
    _version_write(
        job,
        survivors,
        actor=actor,
        reason=f"{reason}; the {len(survivors)} survivor(s) continue without it",
    )


WORKER_EVENTS = ("standby", "rescaled", "left", "peer_failed", "exited")


@transaction.atomic
def job_worker_report(
    *, node: Node, job_id: int, rank: Any, event: str, data: dict[str, Any]
) -> None:
    """An agent relays what one of its workers said or did (agent → control plane):

    * ``standby`` (``address``): a joiner is ready; once every joiner is, they are let in
      by a new cluster version;
    * ``rescaled`` (``version``, ``step``, ``paused_s``): it trains in that version; once
      every member does, the job is running again and ``scale_workers`` is applied;
    * ``left`` (``version``, ``step``): it was removed and exited cleanly;
    * ``peer_failed`` (``version``, ``error``): it waits for a version without a dead peer;
    * ``exited`` (``code``, ``error``): it died while the job is elastic — the job goes on
      without it if it can (see _members_lost).
    """
    if event not in WORKER_EVENTS:
        raise InvalidInput(f"Unknown worker event {event!r}; use {', '.join(WORKER_EVENTS)}.")
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise InvalidInput(
            f"A worker event needs an integer rank (the worker's number); got {rank!r}."
        )
    if not Worker.objects.filter(job_id=job_id, node=node, rank=rank).exists():
        raise NotFound(f"Job {job_id} has no worker {rank} on node {node.name}.")
    job = Job.objects.select_for_update().get(id=job_id)
    worker = _run_workers(job).select_related("node").filter(node=node, rank=rank).first()
    if worker is None:
        _earlier_run_worker_report(job, node=node, rank=rank, event=event)
        return
    actor = f"node:{node.name}"
    version = data.get("version") if isinstance(data.get("version"), int) else None
    step = data.get("step") if isinstance(data.get("step"), int) else None
    if event == "standby":
        if worker.state != Worker.State.JOINING:
            return  # a repeat, or a joiner given up on
        if data.get("address") not in (None, worker.address):
            raise InvalidInput(
                f"Worker {rank} of job {job_id} listens on {worker.address}, "
                f"not {data.get('address')!r}."
            )
        Worker.objects.filter(id=worker.id).update(state=Worker.State.STANDBY)
        _grow_maybe_admit(job)
        _rescale_maybe_finish(job, step=step)
    elif event == "rescaled":
        if version is None:
            raise InvalidInput("A rescaled report needs the version the worker trains in.")
        if version > worker.cluster_version:
            Worker.objects.filter(id=worker.id).update(cluster_version=version)
        paused = data.get("paused_s")
        _rescale_maybe_finish(
            job, step=step, paused_s=float(paused) if isinstance(paused, (int, float)) else None
        )
    elif event == "left":
        Worker.objects.filter(id=worker.id, state__in=Worker.ACTIVE).update(state=Worker.State.LEFT)
        _rescale_maybe_finish(job, step=step)
    elif event == "peer_failed":
        event_record(
            job=job,
            kind=Event.Kind.STATE,
            actor=actor,
            message=f"worker {rank}: a peer failed in cluster version {version}; waiting for the next "
            f"version ({str(data.get('error', ''))[:300]})",
            data={"worker": rank, "cluster_version": version, "event": event},
        )
    elif event == "exited":
        code = data.get("code")
        error = str(data.get("error", ""))[:1500]
        reason = f"worker {rank} on node {node.name} exited with code {code}" + (
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
                data={"worker": rank},
            )
            _grow_maybe_admit(job)
            _rescale_maybe_finish(job, step=step)
        elif any(w.id == worker.id for w in _members(job)):
            _members_lost(job, [worker], actor=actor, reason=reason)
        else:  # removed already; it died on its way out
            Worker.objects.filter(id=worker.id).update(state=Worker.State.FAILED)


def _earlier_run_worker_report(job: Job, *, node: Node, rank: int, event: str) -> None:
    """A worker of an earlier run of the job (a straggler the agent still runs after a
    restart) left or exited: note it on the worker; the job's current run is unaffected."""
    outcome = {"left": Worker.State.LEFT, "exited": Worker.State.FAILED}.get(event)
    if outcome is not None:
        (
            Worker.objects.filter(job=job, node=node, rank=rank, state__in=Worker.ACTIVE)
            .exclude(run_id=job.current_run_id)
            .update(state=outcome)
        )


def job_cancel(*, job: Job, actor: str) -> Job:
    with transaction.atomic():
        job = Job.objects.select_for_update().get(id=job.id)
        if job.is_terminal:
            raise Conflict(f"Job {job.id} is already {job.status}.")
        was_placed = job.status != Job.Status.PENDING
        _transition(
            job,
            to=Job.Status.CANCELLED,
            allowed_from=tuple(s for s in Job.Status.values if s not in Job.TERMINAL),
            actor=actor,
            reason="cancelled",
            finished_at=timezone.now(),
        )
        if was_placed:
            nodes = _active_nodes(job)
            if nodes:
                _command_create(
                    job=job, nodes=nodes, type=Command.Type.STOP, payload={}, issued_by=actor
                )
            _scale_commands_finish(job, step=None, paused_s=None)
    return job


# --- runs ------------------------------------------------------------------------------

# job_restart's ``resume_from`` when the caller gave none: the job's latest checkpoint.
LATEST_CHECKPOINT = object()


def checkpoint_path(checkpoint_dir: str, step: int) -> str:
    """Where the runtime writes the checkpoint of ``step`` (agent.runtime.Trainer.checkpoint)."""
    return f"{checkpoint_dir.rstrip('/')}/step-{step:09d}"


def job_latest_checkpoint(job: Job) -> tuple[str, int] | None:
    """The checkpoint the job's workers wrote last, as (folder, step), or None. The runtime
    reports a ``checkpoint_step`` metric each time rank 0 has written one under the job's
    ``checkpoint_dir`` hyper-parameter; the newest report of the latest run that made one
    wins (a run restarted from scratch writes lower steps than the one before it, and its
    are the ones to use). Run by run, newest first: each is one scan of the per-run index."""
    directory = job.hyperparameters.get("checkpoint_dir")
    if not directory:
        return None
    for run_id in Run.objects.filter(job=job).order_by("-number").values_list("id", flat=True):
        point = (
            MetricPoint.objects.filter(run_id=run_id, name="checkpoint_step")
            .order_by("-time", "-id")
            .values_list("value", flat=True)
            .first()
        )
        if point is not None:
            return checkpoint_path(directory, int(point)), int(point)
    return None


def _restart_resume(job: Job, resume_from: Any) -> tuple[str, int | None, str]:
    """(folder, step, note) for a restarted run: what it resumes from and why."""
    if resume_from is None:
        return "", None, "trains from scratch, as asked (resume_from: null)"
    if resume_from is not LATEST_CHECKPOINT:
        latest = job_latest_checkpoint(job)
        step = latest[1] if latest and latest[0] == resume_from else None
        return resume_from, step, "resumes from the checkpoint asked for (resume_from)"
    latest = job_latest_checkpoint(job)
    if latest is not None:
        return latest[0], latest[1], f"resumes from the job's latest checkpoint (step {latest[1]})"
    if job.hyperparameters.get("resume_from"):
        return (
            job.hyperparameters["resume_from"],
            None,
            "resumes from the checkpoint the job names (hyper-parameter resume_from): the job has "
            "recorded no checkpoint of its own",
        )
    how = (
        "set checkpoint_every, or issue a checkpoint command, to have one"
        if job.hyperparameters.get("checkpoint_dir")
        else "set the hyper-parameters checkpoint_dir and checkpoint_every to have one"
    )
    return "", None, f"trains from scratch: the job has recorded no checkpoint ({how})"


def job_restart(
    *, job: Job, actor: str, resume_from: Any = LATEST_CHECKPOINT, reason: str = ""
) -> Run:
    """Start a new run of a finished job (succeeded, failed or cancelled). It resumes from
    ``resume_from`` (a checkpoint folder the job's nodes can read), from scratch when it
    is None, and by default from the job's latest checkpoint if it recorded one (else
    from scratch; the run's ``resume_note`` says which). The job goes back to pending with
    the new run as its current one, and is placed again by the placement task.

    A run trained from scratch starts with the job's hyper-parameters (batch size and
    learning rate as created); a resumed one with the values the job had last (the
    workers restore the checkpoint's own). Start commands of the run before that no node
    took any more expire, so no agent starts it late."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(id=job.id)
        if not job.is_terminal:
            raise Conflict(
                f"Job {job.id} is {job.status}; only a finished job (succeeded, failed or cancelled) "
                f"can be restarted. Cancel it first to restart it.",
                details={"status": job.status},
            )
        previous = job.current_run
        folder, step, note = _restart_resume(job, resume_from)
        number = (Run.objects.filter(job=job).aggregate(m=Max("number"))["m"] or 0) + 1
        run = Run.objects.create(
            job=job,
            number=number,
            created_by=actor,
            reason=reason,
            resumed_from=folder,
            resumed_from_step=step,
            resume_note=note,
        )
        if previous is not None:
            Command.objects.filter(
                run=previous, type=Command.Type.START, state__in=Command.IN_FLIGHT
            ).update(
                state=Command.State.EXPIRED,
                finished_at=timezone.now(),
                error=f"run {previous.number} ended before the node took it (run {number} replaces it)",
            )
        fresh = (
            {}
            if folder
            else {
                "batch_size": int(job.hyperparameters["batch_size"]),
                "learning_rate": float(job.hyperparameters["lr"]),
            }
        )
        why = f" ({reason})" if reason else ""
        _transition(
            job,
            to=Job.Status.PENDING,
            allowed_from=Job.TERMINAL,
            actor=actor,
            reason=f"restarted as run {number}{why}: {note}",
            current_run=run,
            cluster_version=0,
            workers_current=0,
            workers_wanted=None,
            last_step=0,
            policy_state={},
            started_at=None,
            finished_at=None,
            **fresh,
        )
        event_record(
            job=job,
            kind=Event.Kind.STATE,
            actor=actor,
            message=f"run {number} started by {actor}{why}; "
            + (f"run {previous.number} ended {previous.status}; " if previous else "")
            + note,
            data={
                "event": "restart",
                "run": number,
                "reason": reason,
                "previous_run": previous.number if previous else None,
                "resumed_from": folder or None,
                "resumed_from_step": step,
            },
        )
        from controlplane.jobs.tasks import place_job

        transaction.on_commit(lambda: enqueue(place_job, job.id))
    run.refresh_from_db()
    return run


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
        if not _run_workers(job).filter(node=node).exists():
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
                _run_workers(job).filter(node=node, rank=w["rank"]).update(
                    port=w.get("port"), state=w.get("state", Worker.State.RUNNING)
                )
            _transition(
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
                job_worker_report(node=node, job_id=job.id, rank=w["rank"], event="left", data={})
            elif outcome == Worker.State.FAILED:
                job_worker_report(
                    node=node,
                    job_id=job.id,
                    rank=w["rank"],
                    event="exited",
                    data={"code": w.get("code"), "error": w.get("error", "")},
                )
        job.refresh_from_db()
        mine = _run_workers(job).filter(node=node, state__in=Worker.ACTIVE)
        if status == "succeeded":
            mine.update(state=Worker.State.EXITED)
            _transition(
                job,
                to=Job.Status.SUCCEEDED,
                allowed_from=(Job.Status.SCHEDULING, Job.Status.RUNNING, Job.Status.RESCALING),
                actor=actor,
                reason=reason,
                finished_at=timezone.now(),
            )
        elif status == "failed":
            mine.update(state=Worker.State.FAILED)
            _transition(
                job,
                to=Job.Status.FAILED,
                allowed_from=(Job.Status.SCHEDULING, Job.Status.RUNNING, Job.Status.RESCALING),
                actor=actor,
                reason=reason or "a worker failed",
                finished_at=timezone.now(),
            )
        else:  # stopped
            mine.update(state=Worker.State.EXITED)
            _grow_maybe_admit(job)
            _rescale_maybe_finish(job)
            _stopped_maybe_succeed(job, actor=actor)


def _stopped_maybe_succeed(job: Job, *, actor: str) -> None:
    """A job a user or a policy stopped (the ``stop`` action; not a cancel, not the stop
    that ends abandoned joiners) ends ``succeeded`` once none of its workers is left: its
    workers stopped training cleanly at the step they agreed on (e.g. a policy's early
    stop). Without this it would stay ``running`` with nothing running."""
    job.refresh_from_db()
    if job.is_terminal or _run_workers(job).filter(state__in=Worker.ACTIVE).exists():
        return
    stop = (
        _run_commands(job)
        .filter(type=Command.Type.STOP)
        .exclude(payload__has_key="joiners")
        .order_by("seq")
        .first()
    )
    if stop is None:
        return
    applied = (
        _run_commands(job)
        .filter(seq=stop.seq, state=Command.State.APPLIED)
        .exclude(applied_step=None)
        .values_list("applied_step", flat=True)
        .first()
    )
    at = f" at step {applied}" if applied is not None else ""
    _transition(
        job,
        to=Job.Status.SUCCEEDED,
        allowed_from=(Job.Status.SCHEDULING, Job.Status.RUNNING, Job.Status.RESCALING),
        actor=actor,
        reason=f"stopped by {stop.issued_by}{at}",
        finished_at=timezone.now(),
    )


# --- commands ----------------------------------------------------------------------------


def command_frame(command: Command) -> dict[str, Any]:
    return {
        "type": "command",
        "id": command.id,
        "job": command.job_id,
        "seq": command.seq,
        "action": command.type,
        "payload": command.payload,
    }


def _command_create(
    *,
    job: Job,
    nodes: list[Node],
    type: str,
    payload: dict,
    issued_by: str,
    idempotency_key: str | None = None,
    payload_for=None,
    message: str | None = None,
) -> list[Command]:
    """Rows first, push after commit. The caller holds the job row lock.

    Every node gets the same sequence number: workers agree on commands by it, across
    nodes. ``payload_for(node)``, when given, makes a node's own payload; ``message``
    replaces the event's default text (the type and value).
    """
    seq, run_id = Job.objects.filter(id=job.id).values_list("command_seq", "current_run_id").get()
    seq += 1
    Job.objects.filter(id=job.id).update(command_seq=seq)
    commands = [
        Command.objects.create(
            job=job,
            run_id=run_id,
            node=node,
            seq=seq,
            type=type,
            payload=payload_for(node) if payload_for else payload,
            issued_by=issued_by,
            idempotency_key=idempotency_key if i == 0 else None,
        )
        for i, node in enumerate(nodes)
    ]
    if type != Command.Type.START:
        event_record(
            job=job,
            kind=Event.Kind.COMMAND,
            actor=issued_by,
            message=message or f"{type} {payload.get('value', '')}".strip(),
            data={
                "command": commands[0].id if commands else None,
                "type": type,
                "payload": payload,
                "state": Command.State.PENDING,
            },
        )
    for command in commands:
        frame = command_frame(command)
        transaction.on_commit(
            lambda node_id=command.node_id, frame=frame: channels.push_command_to_agent(
                node_id, frame
            )
        )
    return commands


@transaction.atomic
def command_issue(
    *, job: Job, type: str, value: Any = None, issued_by: str, idempotency_key: str | None = None
) -> list[Command]:
    """Issue a change to a running job (from a user or a policy decision)."""
    job = Job.objects.select_for_update().get(id=job.id)
    if idempotency_key:
        existing = list(_run_commands(job).filter(idempotency_key=idempotency_key))
        if existing:
            return existing
    if type == Command.Type.SCALE_WORKERS:
        return _job_scale(job, value=value, issued_by=issued_by, idempotency_key=idempotency_key)
    if job.status == Job.Status.RESCALING and type != Command.Type.STOP:
        raise Conflict(
            f"Job {job.id} is rescaling (cluster version {job.cluster_version}); only stop is "
            f"accepted until it is running again."
        )
    if job.status not in (Job.Status.RUNNING, Job.Status.SCHEDULING, Job.Status.RESCALING):
        raise Conflict(f"Job {job.id} is {job.status}; commands need a running job.")
    nodes = _active_nodes(job)
    if not nodes:
        raise Conflict(f"Job {job.id} has no workers to command.")
    payload = {} if value is None else {"value": value}
    return _command_create(
        job=job,
        nodes=nodes,
        type=type,
        payload=payload,
        issued_by=issued_by,
        idempotency_key=idempotency_key,
    )


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


def command_mark_sent(*, command_id: int) -> None:
    """The command went out on an agent's WebSocket (again: ``sent_at`` is the latest)."""
    Command.objects.filter(
        id=command_id, state__in=[Command.State.PENDING, Command.State.SENT]
    ).update(state=Command.State.SENT, sent_at=timezone.now())


def command_ack(*, node: Node, command_id: int) -> None:
    Command.objects.filter(
        id=command_id, node=node, state__in=[Command.State.PENDING, Command.State.SENT]
    ).update(state=Command.State.ACKED, acked_at=timezone.now())


_APPLIED_FIELDS = {
    Command.Type.SET_BATCH_SIZE: ("batch_size", int),
    Command.Type.SET_LR: ("learning_rate", float),
    Command.Type.SET_STRATEGY: ("strategy", str),
    Command.Type.SET_TOPOLOGY: ("topology", str),
}


@transaction.atomic
def command_finish(
    *,
    node: Node,
    command_id: int,
    ok: bool,
    step: int | None = None,
    error: str = "",
    lr: float | None = None,
) -> None:
    """The node's workers applied the command (at ``step``) or could not. ``lr``: the
    learning rate the workers report using afterwards (recorded for batch-size changes)."""
    command = Command.objects.select_for_update().filter(id=command_id, node=node).first()
    if command is None:
        raise NotFound(f"Command {command_id} is not addressed to node {node.name}.")
    if command.state in (Command.State.APPLIED, Command.State.FAILED):
        return  # a redelivered report: applied exactly once
    state = Command.State.APPLIED if ok else Command.State.FAILED
    Command.objects.filter(id=command.id).update(
        state=state, applied_step=step, error=error, finished_at=timezone.now()
    )
    job = command.job
    if ok and command.type in _APPLIED_FIELDS and "value" in command.payload:
        field, cast = _APPLIED_FIELDS[command.type]
        changes = {field: cast(command.payload["value"])}
        rule = job.hyperparameters.get("lr_scaling", "none")
        if command.type == Command.Type.SET_BATCH_SIZE and rule != "none":
            # The workers scaled their learning rate by the job's rule; record the same value.
            current = Job.objects.filter(id=job.id).values_list("batch_size", "learning_rate").get()
            changes["learning_rate"] = (
                lr
                if lr is not None
                else scaled_lr(
                    current[1], old_batch=current[0], new_batch=changes["batch_size"], rule=rule
                )
            )
        Job.objects.filter(id=job.id).update(**changes)
        transaction.on_commit(lambda: _publish_job(job.id))
    if command.type != Command.Type.START:
        verb = f"applied at step {step}" if ok else f"failed: {error}"
        event_record(
            job=job,
            kind=Event.Kind.COMMAND,
            actor=f"node:{node.name}",
            message=f"{command.type} {command.payload.get('value', '')} {verb}".replace("  ", " "),
            data={
                "command": command.id,
                "type": command.type,
                "payload": command.payload,
                "state": state,
            },
            step=step,
        )


# --- nodes -------------------------------------------------------------------------------


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
        from controlplane.jobs.tasks import place_pending_jobs

        transaction.on_commit(place_pending_jobs.delay)
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
            moved = _transition(
                job,
                to=Job.Status.FAILED,
                allowed_from=tuple(s for s in Job.Status.values if s not in Job.TERMINAL),
                actor=f"node:{node.name}",
                finished_at=timezone.now(),
                reason=f"the agent on node {node.name} no longer runs this job's workers (it restarted)",
            )
            if moved:
                _run_workers(job).filter(node=node, state__in=Worker.ACTIVE).update(
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
                member_ids = {w.id for w in _members(job)}
                members_gone = [w for w in gone if w.id in member_ids]
                if members_gone or job.cluster_version == 0:
                    _members_lost(job, members_gone, actor="scheduler", reason=reason)
                else:  # only joiners were there
                    _grow_maybe_admit(job)
                    _rescale_maybe_finish(job)
            Worker.objects.filter(node=node, state__in=Worker.ACTIVE).update(
                state=Worker.State.FAILED
            )
    return lost


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
    ready = _run_workers(job).filter(state=Worker.State.STANDBY).count()
    still_joining = _run_workers(job).filter(state=Worker.State.JOINING).count()
    size = len(_members(job))
    if ready or still_joining:
        outcome = f"the other {ready + still_joining} joiner(s) join without them"
    else:
        outcome = f"the grow is abandoned; the job runs on with its {size} worker(s)"
    event_record(
        job=job,
        kind=Event.Kind.STATE,
        actor="scheduler",
        message=f"{reason}; {outcome}",
        data={"workers": [w.rank for w in stale], "event": "join_timeout", "timeout_s": timeout_s},
    )
    # Let the ready ones in first: the new version names the grow's issuer as its actor.
    _grow_maybe_admit(job)
    job.refresh_from_db()
    _scale_commands_finish(job, step=None, paused_s=None, error=f"{reason}; {outcome}")
    _rescale_maybe_finish(job)
    # Every node of the job gets the stop, with the joiners it should end (maybe none):
    # workers agree on commands by a gap-free sequence, so a command only some nodes
    # received would hold up every later command on the others. Agents end just the
    # listed standby processes and pass the sequence number on to their members.
    by_node: dict[int, list[int]] = {}
    for w in stale:
        if w.node.status == Node.Status.ONLINE:  # an agent that is gone took them with it
            by_node.setdefault(w.node_id, []).append(w.rank)
    if not by_node:
        return
    nodes = {n.id: n for n in _active_nodes(job)}
    nodes.update({w.node_id: w.node for w in stale if w.node_id in by_node})
    stopping = "; ".join(
        f"{', '.join(map(str, ranks))} on node {nodes[node_id].name}"
        for node_id, ranks in sorted(by_node.items())
    )
    _command_create(
        job=job,
        nodes=[nodes[i] for i in sorted(nodes)],
        type=Command.Type.STOP,
        issued_by="scheduler",
        payload={"joiners": [w.rank for w in stale if w.node_id in by_node], "reason": reason},
        payload_for=lambda node: {"joiners": by_node.get(node.id, []), "reason": reason},
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
            latest = _current_version(job)
            if latest is None or now - latest.created_at < timedelta(seconds=delay_s):
                continue
            # A command has one row per node (same seq): count commands, newest first.
            rows = (
                _run_commands(job)
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
            nodes = {n.id: n for n in Node.objects.filter(status=Node.Status.ONLINE)}
            free = sum(
                max(c.free_slots, 0)
                for c in _capacities(nodes)
                if placement.labels_match(c.labels, job.node_selector)
            )
            value = min(job.wanted_workers, job.workers_max, job.workers_current + free)
            if value <= job.workers_current:
                continue
            try:
                _job_scale(job, value=value, issued_by=SCHEDULER, idempotency_key=None)
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


def commands_expire(*, ttl_s: float) -> int:
    """Commands still pending or unacknowledged after ``ttl_s`` expire: the node never
    took them (it is gone, or its job ended). Returns how many expired."""
    cutoff = timezone.now() - timedelta(seconds=ttl_s)
    expired = 0
    stale = Command.objects.filter(
        state__in=[Command.State.PENDING, Command.State.SENT], created_at__lt=cutoff
    )
    for command in stale.select_related("job", "node"):
        with transaction.atomic():
            if (
                Command.objects.filter(
                    id=command.id, state__in=[Command.State.PENDING, Command.State.SENT]
                ).update(
                    state=Command.State.EXPIRED,
                    finished_at=timezone.now(),
                    error=f"not acknowledged by node {command.node.name} within {ttl_s:.0f} s",
                )
                != 1
            ):
                continue
            expired += 1
            if command.type != Command.Type.START:
                event_record(
                    job=command.job,
                    kind=Event.Kind.COMMAND,
                    actor="scheduler",
                    message=f"{command.type} expired: node {command.node.name} never acknowledged it",
                    data={
                        "command": command.id,
                        "type": command.type,
                        "state": Command.State.EXPIRED,
                    },
                )
    return expired
