"""Every write to jobs, nodes, workers, commands and events.

State transitions are guarded by conditional updates so that concurrent callers
(web requests, Celery tasks, agent messages) cannot both win; pushes to browsers and
agents run after the transaction commits.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agent.scaling import scaled_lr
from controlplane.errors import AuthenticationFailed, Conflict, InvalidInput, NotFound
from controlplane.jobs import credentials, placement
from controlplane.jobs.models import Command, Event, Job, JoinToken, Node, Worker
from controlplane.live import channels

log = logging.getLogger(__name__)

# Entrypoints the agent knows how to start (module run with ``python -m``).
ENTRYPOINTS = {
    "examples.digits": "examples.digits.train",
    "examples.synthetic_cnn": "examples.synthetic_cnn.train",
}


def job_snapshot(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "status": job.status, "status_reason": job.status_reason,
        "batch_size": job.batch_size, "lr": job.learning_rate, "workers": job.workers_current,
        "strategy": job.strategy, "topology": job.topology, "step": job.last_step,
    }


def _publish_job(job_id: int) -> None:
    job = Job.objects.get(id=job_id)
    channels.publish_to_job(job_id, channels.FRAME_JOB, job_snapshot(job))


def event_record(
    *, job: Job, kind: str, actor: str, message: str, data: dict | None = None, step: int | None = None
) -> Event:
    event = Event.objects.create(
        job=job, kind=kind, actor=actor, message=message, data=data or {}, step=step
    )
    frame = {
        "id": event.id, "kind": kind, "actor": actor, "message": message, "data": event.data,
        "step": step, "time": event.created_at.isoformat(),
    }
    transaction.on_commit(lambda: channels.publish_to_job(job.id, channels.FRAME_EVENT, frame))
    return event


def _transition(job: Job, *, to: str, allowed_from: tuple[str, ...], actor: str, reason: str = "",
                **fields: Any) -> bool:
    """Move a job to ``to`` if it is in one of ``allowed_from``; return whether it moved."""
    updated = Job.objects.filter(id=job.id, status__in=allowed_from).update(
        status=to, status_reason=reason, **fields
    )
    if updated != 1:
        return False
    message = f"{job.status} → {to}" + (f": {reason}" if reason else "")
    job.status = to
    event_record(job=job, kind=Event.Kind.STATE, actor=actor, message=message, data={"status": to})
    transaction.on_commit(lambda: _publish_job(job.id))
    return True


# --- jobs --------------------------------------------------------------------------------

@transaction.atomic
def job_create(
    *, owner, name: str, entrypoint: str, hyperparameters: dict[str, Any], workers_initial: int,
    workers_min: int, workers_max: int, strategy: str, topology: str, policy=None,
) -> Job:
    if entrypoint not in ENTRYPOINTS:
        raise InvalidInput(
            f"Unknown entrypoint {entrypoint!r}; available: {', '.join(sorted(ENTRYPOINTS))}.",
            details={"entrypoint": sorted(ENTRYPOINTS)},
        )
    if not workers_min <= workers_initial <= workers_max:
        raise InvalidInput(
            "Workers must satisfy min ≤ initial ≤ max.",
            details={"workers": {"min": workers_min, "initial": workers_initial, "max": workers_max}},
        )
    job = Job.objects.create(
        owner=owner, name=name, entrypoint=entrypoint, hyperparameters=hyperparameters,
        workers_initial=workers_initial, workers_min=workers_min, workers_max=workers_max,
        strategy=strategy, topology=topology, policy=policy,
        batch_size=int(hyperparameters["batch_size"]), learning_rate=float(hyperparameters["lr"]),
    )
    # Before the first frame of the job is published (event_record's push runs on commit too).
    transaction.on_commit(lambda: channels.frame_log_reset(job.id))
    event_record(job=job, kind=Event.Kind.STATE, actor=f"user:{owner.username}", message="created",
                 data={"status": job.status})
    from controlplane.jobs.tasks import place_job

    transaction.on_commit(lambda: place_job.delay(job.id))
    return job


def _free_slots(node: Node) -> int:
    busy = Worker.objects.filter(
        node=node, state__in=[Worker.State.STARTING, Worker.State.RUNNING]
    ).count()
    return node.slots - busy


def job_place(*, job_id: int) -> bool:
    """Place a pending job's workers on online nodes with free slots (see placement.py)
    and send each node a start command for its ranks. Returns whether the job was placed;
    a job that fits nowhere stays pending and the periodic sweep retries it."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(id=job_id).first()
        if job is None or job.status != Job.Status.PENDING:
            return False
        nodes = {n.id: n for n in Node.objects.select_for_update().filter(status=Node.Status.ONLINE)}
        plan = placement.plan_placement(
            [placement.NodeCapacity(node_id=n.id, free_slots=_free_slots(n)) for n in nodes.values()],
            job.workers_initial,
        )
        if plan is None:
            return False
        Worker.objects.bulk_create(
            [Worker(job=job, node=nodes[node_id], rank=r) for node_id, ranks in plan.items() for r in ranks]
        )
        where = ", ".join(f"{nodes[node_id].name} (ranks {ranks[0]}–{ranks[-1]})" if len(ranks) > 1
                          else f"{nodes[node_id].name} (rank {ranks[0]})" for node_id, ranks in plan.items())
        _transition(job, to=Job.Status.SCHEDULING, allowed_from=(Job.Status.PENDING,),
                    actor="scheduler", reason=f"placed {job.workers_initial} worker(s) on {where}",
                    workers_current=job.workers_initial)
        payload = {
            "job": job.id,
            "entrypoint": ENTRYPOINTS[job.entrypoint],
            "hyperparameters": job.hyperparameters,
            "batch_size": job.batch_size,
            "lr": job.learning_rate,
            "strategy": job.strategy,
            "topology": job.topology,
            "world_size": job.workers_initial,
            "cluster_version": 1,
        }
        _command_create(job=job, nodes=[nodes[node_id] for node_id in plan], type=Command.Type.START,
                        payload=payload, issued_by="scheduler",
                        payload_for=lambda node: {**payload, "ranks": plan[node.id]})
    return True


def cluster_spec(*, job: Job) -> dict[str, Any]:
    """The rendezvous: every worker's address by rank, once all have reported a port."""
    workers = list(Worker.objects.filter(job=job).select_related("node").order_by("rank"))
    ready = all(w.port for w in workers) and len(workers) == job.workers_current
    return {
        "job": job.id, "version": 1, "world_size": len(workers), "complete": ready,
        "members": [f"{w.node.address}:{w.port}" if w.port else None for w in workers],
    }


def workers_register(*, node: Node, job_id: int, workers: list[dict]) -> Job:
    """An agent reports the ports its workers of a job will listen on."""
    job = Job.objects.filter(id=job_id, workers__node=node).distinct().first()
    if job is None:
        raise NotFound(f"Job {job_id} has no workers on node {node.name}.")
    mine = set(Worker.objects.filter(job=job, node=node).values_list("rank", flat=True))
    for w in workers:
        if w.get("rank") not in mine:
            raise InvalidInput(f"Rank {w.get('rank')!r} of job {job_id} is not placed on node {node.name}.")
        port = w.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidInput(f"Port {port!r} of rank {w['rank']} is not a TCP port.")
    for w in workers:
        Worker.objects.filter(job=job, node=node, rank=w["rank"]).update(port=w["port"])
    return job


def job_cancel(*, job: Job, actor: str) -> Job:
    with transaction.atomic():
        job = Job.objects.select_for_update().get(id=job.id)
        if job.is_terminal:
            raise Conflict(f"Job {job.id} is already {job.status}.")
        was_placed = job.status != Job.Status.PENDING
        _transition(job, to=Job.Status.CANCELLED, allowed_from=tuple(
            s for s in Job.Status.values if s not in Job.TERMINAL), actor=actor,
            reason="cancelled", finished_at=timezone.now())
        if was_placed:
            _command_create(job=job, nodes=_job_nodes(job), type=Command.Type.STOP, payload={},
                            issued_by=actor)
    return job


def _job_nodes(job: Job) -> list[Node]:
    return list(Node.objects.filter(workers__job=job).distinct())


def job_report(*, node: Node, job_id: int, status: str, reason: str = "",
               workers: list[dict] | None = None) -> None:
    """An agent reports its part of a job: running (with worker ports), succeeded or failed."""
    job = Job.objects.filter(id=job_id, workers__node=node).distinct().first()
    if job is None:
        raise NotFound(f"Job {job_id} has no workers on node {node.name}.")
    with transaction.atomic():
        for w in workers or []:
            Worker.objects.filter(job=job, node=node, rank=w["rank"]).update(
                port=w.get("port"), state=w.get("state", Worker.State.RUNNING)
            )
        actor = f"node:{node.name}"
        if status == "running":
            _transition(job, to=Job.Status.RUNNING, allowed_from=(Job.Status.SCHEDULING,),
                        actor=actor, started_at=timezone.now())
        elif status == "succeeded":
            Worker.objects.filter(job=job, node=node).update(state=Worker.State.EXITED)
            _transition(job, to=Job.Status.SUCCEEDED,
                        allowed_from=(Job.Status.SCHEDULING, Job.Status.RUNNING, Job.Status.RESCALING),
                        actor=actor, reason=reason, finished_at=timezone.now())
        elif status == "failed":
            Worker.objects.filter(job=job, node=node).exclude(state=Worker.State.EXITED).update(
                state=Worker.State.FAILED)
            _transition(job, to=Job.Status.FAILED,
                        allowed_from=(Job.Status.SCHEDULING, Job.Status.RUNNING, Job.Status.RESCALING),
                        actor=actor, reason=reason or "a worker failed", finished_at=timezone.now())
        elif status == "stopped":
            Worker.objects.filter(job=job, node=node).update(state=Worker.State.EXITED)
        else:
            raise InvalidInput(f"Unknown job status {status!r}; use running, succeeded, failed or stopped.")


# --- commands ----------------------------------------------------------------------------

def command_frame(command: Command) -> dict[str, Any]:
    return {"type": "command", "id": command.id, "job": command.job_id, "seq": command.seq,
            "action": command.type, "payload": command.payload}


def _command_create(*, job: Job, nodes: list[Node], type: str, payload: dict, issued_by: str,
                    idempotency_key: str | None = None, payload_for=None) -> list[Command]:
    """Rows first, push after commit. The caller holds the job row lock.

    Every node gets the same sequence number: workers agree on commands by it, across
    nodes. ``payload_for(node)``, when given, makes a node's own payload.
    """
    seq = Job.objects.filter(id=job.id).values_list("command_seq", flat=True).get() + 1
    Job.objects.filter(id=job.id).update(command_seq=seq)
    commands = [
        Command.objects.create(job=job, node=node, seq=seq, type=type,
                               payload=payload_for(node) if payload_for else payload,
                               issued_by=issued_by, idempotency_key=idempotency_key if i == 0 else None)
        for i, node in enumerate(nodes)
    ]
    if type != Command.Type.START:
        event_record(job=job, kind=Event.Kind.COMMAND, actor=issued_by,
                     message=f"{type} {payload.get('value', '')}".strip(),
                     data={"command": commands[0].id if commands else None, "type": type,
                           "payload": payload, "state": Command.State.PENDING})
    for command in commands:
        frame = command_frame(command)
        transaction.on_commit(
            lambda node_id=command.node_id, frame=frame: channels.push_command_to_agent(node_id, frame)
        )
    return commands


@transaction.atomic
def command_issue(*, job: Job, type: str, value: Any = None, issued_by: str,
                  idempotency_key: str | None = None) -> list[Command]:
    """Issue a change to a running job (from a user or a policy decision)."""
    job = Job.objects.select_for_update().get(id=job.id)
    if idempotency_key:
        existing = list(Command.objects.filter(job=job, idempotency_key=idempotency_key))
        if existing:
            return existing
    if job.status not in (Job.Status.RUNNING, Job.Status.SCHEDULING):
        raise Conflict(f"Job {job.id} is {job.status}; commands need a running job.")
    nodes = _job_nodes(job)
    if not nodes:
        raise Conflict(f"Job {job.id} has no workers to command.")
    payload = {} if value is None else {"value": value}
    return _command_create(job=job, nodes=nodes, type=type, payload=payload, issued_by=issued_by,
                           idempotency_key=idempotency_key)


def commands_unfinished_for_node(node: Node) -> list[Command]:
    return list(
        Command.objects.filter(node=node, state__in=[Command.State.PENDING, Command.State.SENT])
        .exclude(job__status__in=Job.TERMINAL, type=Command.Type.START)
        .order_by("job_id", "seq")
    )


def command_mark_sent(*, command_id: int) -> None:
    Command.objects.filter(id=command_id, state=Command.State.PENDING).update(
        state=Command.State.SENT, sent_at=timezone.now()
    )


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
def command_finish(*, node: Node, command_id: int, ok: bool, step: int | None = None,
                   error: str = "") -> None:
    """The node's workers applied the command (at ``step``) or could not."""
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
            changes["learning_rate"] = scaled_lr(current[1], old_batch=current[0],
                                                 new_batch=changes["batch_size"], rule=rule)
        Job.objects.filter(id=job.id).update(**changes)
        transaction.on_commit(lambda: _publish_job(job.id))
    if command.type != Command.Type.START:
        verb = f"applied at step {step}" if ok else f"failed: {error}"
        event_record(job=job, kind=Event.Kind.COMMAND, actor=f"node:{node.name}",
                     message=f"{command.type} {command.payload.get('value', '')} {verb}".replace("  ", " "),
                     data={"command": command.id, "type": command.type, "payload": command.payload,
                           "state": state}, step=step)


# --- nodes -------------------------------------------------------------------------------

def join_token_create(*, label: str = "", created_by=None, ttl: timedelta | None = None) -> str:
    secret = credentials.new_secret("join")
    JoinToken.objects.create(
        label=label, token_hash=credentials.digest(secret), created_by=created_by,
        expires_at=timezone.now() + ttl if ttl else None,
    )
    return secret


@transaction.atomic
def node_enrol(*, join_token: str, name: str, address: str, slots: int,
               labels: dict[str, str]) -> tuple[Node, str]:
    """Exchange a join token for a per-node credential (returned once, stored hashed).

    Re-enrolling a name replaces that node's credential: an agent that lost its state
    directory comes back as the same node.
    """
    token = JoinToken.objects.filter(token_hash=credentials.digest(join_token), revoked=False).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
    ).first()
    if token is None:
        raise AuthenticationFailed("The join token is unknown, revoked or expired; ask an admin "
                                   "for a new one (manage.py create_join_token).")
    credential = credentials.new_secret("node")
    node, _ = Node.objects.update_or_create(
        name=name,
        defaults={"address": address, "slots": slots, "labels": labels,
                  "credential_hash": credentials.digest(credential), "status": Node.Status.ONLINE,
                  "last_heartbeat": timezone.now()},
    )
    return node, credential


def node_authenticate(credential: str) -> Node | None:
    if not credential:
        return None
    return Node.objects.filter(credential_hash=credentials.digest(credential)).first()


def node_heartbeat(*, node: Node, running_jobs: list[int] | None = None) -> None:
    """Record that the node is alive. ``running_jobs``, when given, is the set of jobs whose
    workers the agent runs now: a job the agent started (its start command applied) but no
    longer runs lost its workers — the agent restarted — and fails with that reason."""
    now = timezone.now()
    Node.objects.filter(id=node.id).update(last_heartbeat=now, status=Node.Status.ONLINE)
    if node.status != Node.Status.ONLINE:
        from controlplane.jobs.tasks import place_pending_jobs

        transaction.on_commit(place_pending_jobs.delay)
    if running_jobs is None:
        return
    orphaned = (
        Job.objects.filter(workers__node=node, commands__node=node,
                           commands__type=Command.Type.START, commands__state=Command.State.APPLIED)
        .exclude(status__in=Job.TERMINAL).exclude(id__in=running_jobs).distinct()
    )
    for job in orphaned:
        with transaction.atomic():
            moved = _transition(
                job, to=Job.Status.FAILED, allowed_from=tuple(s for s in Job.Status.values if s not in Job.TERMINAL),
                actor=f"node:{node.name}", finished_at=timezone.now(),
                reason=f"the agent on node {node.name} no longer runs this job's workers (it restarted)",
            )
            if moved:
                Worker.objects.filter(job=job, node=node).exclude(state=Worker.State.EXITED).update(
                    state=Worker.State.FAILED)


def nodes_mark_lost(*, timeout_s: float) -> list[int]:
    """Nodes silent for longer than ``timeout_s`` become lost; jobs running there fail."""
    cutoff = timezone.now() - timedelta(seconds=timeout_s)
    lost = []
    for node in Node.objects.filter(status=Node.Status.ONLINE, last_heartbeat__lt=cutoff):
        with transaction.atomic():
            if Node.objects.filter(id=node.id, status=Node.Status.ONLINE,
                                   last_heartbeat__lt=cutoff).update(status=Node.Status.LOST) != 1:
                continue
            lost.append(node.id)
            jobs = Job.objects.filter(workers__node=node).exclude(status__in=Job.TERMINAL).distinct()
            for job in jobs:
                _transition(job, to=Job.Status.FAILED, allowed_from=tuple(
                    s for s in Job.Status.values if s not in Job.TERMINAL), actor="scheduler",
                    reason=f"node {node.name} lost (no heartbeat for {timeout_s:.0f} s)",
                    finished_at=timezone.now())
            Worker.objects.filter(node=node).exclude(state=Worker.State.EXITED).update(
                state=Worker.State.FAILED)
    return lost


def commands_expire(*, ttl_s: float) -> int:
    """Commands still pending or unacknowledged after ``ttl_s`` expire: the node never
    took them (it is gone, or its job ended). Returns how many expired."""
    cutoff = timezone.now() - timedelta(seconds=ttl_s)
    expired = 0
    stale = Command.objects.filter(state__in=[Command.State.PENDING, Command.State.SENT], created_at__lt=cutoff)
    for command in stale.select_related("job", "node"):
        with transaction.atomic():
            if Command.objects.filter(id=command.id, state__in=[Command.State.PENDING, Command.State.SENT]).update(
                    state=Command.State.EXPIRED, finished_at=timezone.now(),
                    error=f"not acknowledged by node {command.node.name} within {ttl_s:.0f} s") != 1:
                continue
            expired += 1
            if command.type != Command.Type.START:
                event_record(job=command.job, kind=Event.Kind.COMMAND, actor="scheduler",
                             message=f"{command.type} expired: node {command.node.name} never acknowledged it",
                             data={"command": command.id, "type": command.type, "state": Command.State.EXPIRED})
    return expired
