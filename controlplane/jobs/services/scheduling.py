"""Placing pending jobs: workers on online nodes that are not draining, with free slots
and labels that match the job's node selector (the pure plan is
``placement.plan_placement``), a start command to each node, and, for a job that fits
nowhere yet, the reason it waits."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Max

from agent.protocol import vocabulary
from controlplane.jobs import outbox, placement, selectors
from controlplane.jobs.lifecycle import SCHEDULER, event_record, job_publish, job_transition
from controlplane.jobs.models import Command, Event, Job, Node, Run, Worker


def job_place(*, job_id: int) -> bool:
    """Place a pending job's workers on online nodes with free slots whose labels match the
    job's node selector (see placement.py) and send each node a start command for its
    ranks. Returns whether the job was placed; a job that fits nowhere stays pending (with
    the reason recorded: what it needs, what is free) and the periodic sweep retries it.

    The first placement makes run 1; a restarted job (jobs.job_restart) already has its
    new run, pending, and that run is placed. Nodes still running workers of an earlier
    run of the job are left out (see _nodes_busy_with_earlier_runs)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(id=job_id).first()
        if job is None or job.status != Job.Status.PENDING:
            return False
        # Online and not drained by an admin (Node.objects.schedulable).
        nodes = {n.id: n for n in Node.objects.schedulable().select_for_update()}
        busy = _nodes_busy_with_earlier_runs(job)
        capacities = [c for c in selectors.node_capacities(nodes) if c.node_id not in busy]
        # All the initial workers; an elastic job short of room starts with as many as fit,
        # at least its minimum, and is grown to the rest when slots free up.
        size, plan = job.workers_initial, None
        while plan is None and size >= _fewest_to_start(job):
            plan = placement.plan_placement(capacities, size, job.node_selector, job.code_kind)
            size -= plan is None
        if plan is None:
            _pending_reason_record(
                job,
                capacities,
                busy_nodes={nodes[n].name: r for n, r in busy.items() if n in nodes},
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
        job_transition(
            job,
            to=Job.Status.SCHEDULING,
            allowed_from=(Job.Status.PENDING,),
            actor=SCHEDULER,
            reason=f"run {run.number}: placed {size} worker(s) on {where}{short}",
            workers_current=size,
            **({"current_run": run} if first else {}),
        )
        outbox.commands_create(
            job=job,
            nodes=[nodes[node_id] for node_id in plan],
            type=Command.Type.START,
            payload=outbox.start_payload(job, run, world_size=size, ranks=()).to_dict(),
            issued_by=SCHEDULER,
            payload_for=lambda node: outbox.start_payload(
                job, run, world_size=size, ranks=plan[node.id]
            ).to_dict(),
        )
    return True


def _fewest_to_start(job: Job) -> int:
    """An elastic job starts with as many of its initial workers as fit, at least its
    minimum (and grows to the rest later); any other job with all of them."""
    return job.workers_min if job.is_elastic else job.workers_initial


def _slots_text(job: Job) -> str:
    needed = _fewest_to_start(job)
    if needed < job.workers_initial:
        return f"{needed} free slot(s) (it starts with up to {job.workers_initial} worker(s), at least {needed})"
    return f"{needed} free slot(s)"


def _code_refused(job: Job) -> str | None:
    """Why no enrolled node runs the job's kind of code, or None when one does (or no node
    is enrolled at all: the job waits for nodes as any job does)."""
    kind = job.code_kind
    enrolled = list(Node.objects.enrolled().exclude(status=Node.Status.REVOKED))
    if not enrolled or any(kind in (n.code_kinds or ()) for n in enrolled):
        return None
    what = {
        vocabulary.CODE_BUNDLES: "code bundles (the job's code was uploaded with it)",
        vocabulary.CODE_INSTALLED: f"installed code (the job runs {job.module}, not an example)",
        vocabulary.CODE_EXAMPLES: "the examples",
    }[kind]
    return (
        f"no enrolled node runs {what}: each node's owner chooses what it runs with "
        f"AGENT_CODE (e.g. AGENT_CODE=bundles,installed,examples); the job stays pending "
        f"until such a node enrols or changes its AGENT_CODE"
    )


def _pending_reason(job: Job, capacities: list[placement.NodeCapacity]) -> str:
    """Why a job is not placed, with numbers: no enrolled node could ever hold it, or how
    many free slots the schedulable nodes it may use have now against what it needs.
    ``capacities``: the online, not draining nodes the job may use (an earlier run's
    nodes left out)."""
    needed = _fewest_to_start(job)
    selector = placement.node_selector_text(job.node_selector) if job.node_selector else ""
    matching_text = f" matching node_selector {selector}" if selector else ""
    enrolled = [
        n
        for n in Node.objects.enrolled().exclude(status=Node.Status.REVOKED)
        if placement.labels_match(n.labels or {}, job.node_selector)
        and job.code_kind in (n.code_kinds or ())
    ]
    if not enrolled:
        if selector:
            return (
                f"no enrolled node has labels matching node_selector {selector}; the job stays "
                f"pending until a node with those labels enrols"
            )
        return (
            "no node is enrolled; the job stays pending until an agent enrols (Nodes → Add a node)"
        )
    slots = sum(n.slots for n in enrolled)
    if slots < needed:
        whose = f"whose labels match node_selector {selector} " if selector else ""
        return (
            f"the enrolled nodes {whose}have {slots} slot(s) in all, fewer than the {needed} "
            f"worker(s) the job starts with at least; the job stays pending until more "
            f"such nodes enrol"
        )
    usable = [c for c in capacities if placement.labels_match(c.labels, job.node_selector)]
    free = sum(max(c.free_slots, 0) for c in usable)
    away = len(enrolled) - len(usable)
    return (
        f"needs {_slots_text(job)}; {free} free on {len(usable)} online node(s){matching_text}"
        + (f" ({away} more offline, lost or draining)" if away > 0 else "")
    )


def _pending_reason_record(
    job: Job,
    capacities: list[placement.NodeCapacity],
    *,
    busy_nodes: dict[str, int] | None = None,
) -> None:
    """Record why a job waits, once per change of reason (the sweep retries every few
    seconds, so the reason follows nodes coming and going and slots freeing up)."""
    reason = _pending_reason(job, capacities)
    refused = _code_refused(job)
    if refused is not None:
        reason = refused
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
        actor=SCHEDULER,
        message=f"pending: {reason}",
        data={"status": job.status, "reason": reason, "node_selector": job.node_selector},
    )
    transaction.on_commit(lambda: job_publish(job.id))


def _run_first(job: Job) -> Run:
    """Run 1, made by the job's first placement; the caller holds the job row lock."""
    resumed_from = job.hyperparameters.get("resume_from") or ""
    number = (Run.objects.filter(job=job).aggregate(m=Max("number"))["m"] or 0) + 1
    return Run.objects.create(
        job=job,
        number=number,
        created_by=SCHEDULER,
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
