"""What the control plane tells agents: commands as durable rows, and the frames pushed
to agents on /ws/agent/ (``command`` and ``cluster``), built with the typed frames and
payloads of :mod:`agent.protocol.control`.

A command is a row first and a push after commit, so a push lost with Redis is sent
again from its row (see ``live.consumers.AgentCommandConsumer``). The payload a worker
starts with is built here once, for a job's start and for a joiner of a grow alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils.crypto import salted_hmac

from agent.protocol.control import (
    ClusterFrame,
    CommandFrame,
    JoinerSpec,
    JoinPayload,
    StartPayload,
)
from agent.protocol.worker import WorkerParams
from controlplane.jobs import selectors
from controlplane.jobs.lifecycle import event_record
from controlplane.jobs.models import (
    ClusterVersion,
    Command,
    Event,
    Job,
    Node,
    Run,
    Worker,
)
from controlplane.live import channels


def worker_params(job: Job, run: Run) -> WorkerParams:
    """The job's parameters a worker of ``run`` starts with, as they are now (with
    ``resume_from`` the checkpoint the run resumes from; none: from scratch)."""
    hyperparameters = {k: v for k, v in job.hyperparameters.items() if k != "resume_from"}
    if run.resumed_from:
        hyperparameters["resume_from"] = run.resumed_from
    return WorkerParams(
        hyperparameters=hyperparameters,
        batch_size=job.batch_size,
        lr=job.learning_rate,
        strategy=job.strategy,
        topology=job.topology,
    )


def start_payload(job: Job, run: Run, *, world_size: int, ranks: Sequence[int]) -> StartPayload:
    """A ``start`` command's payload: the node starts workers ``ranks`` of the job's first
    cluster version of ``world_size`` workers."""
    params = worker_params(job, run)
    return StartPayload(
        job=job.id,
        entrypoint=job.module,
        hyperparameters=params.hyperparameters,
        batch_size=params.batch_size,
        lr=params.lr,
        strategy=params.strategy,
        topology=params.topology,
        world_size=world_size,
        cluster_version=1,
        workers_min=job.workers_min,
        ranks=tuple(ranks),
        bundle=job.bundle_digest or None,
    )


def join_payload(
    job: Job, run: Run, version: ClusterVersion, joiners: Sequence[tuple[int, int]]
) -> JoinPayload:
    """A grow's ``join`` for one node: it starts ``joiners`` (rank in the job, rank in the
    version they join) as warm standbys that join after ``version``, with the parameters a
    started worker gets."""
    params = worker_params(job, run)
    return JoinPayload(
        cluster_version=version.version,
        members=tuple(version.members),
        workers_min=job.workers_min,
        entrypoint=job.module,
        hyperparameters=params.hyperparameters,
        batch_size=params.batch_size,
        lr=params.lr,
        strategy=params.strategy,
        topology=params.topology,
        workers=tuple(JoinerSpec(rank=r, cluster_rank=c) for r, c in joiners),
        bundle=job.bundle_digest or None,
    )


FABRIC_SECRET_SALT = "adaptrain.fabric-secret"


def fabric_secret(job_id: int, run_id: int) -> str:
    """The secret the workers of run ``run_id`` of job ``job_id`` prove their membership
    with (64 hex digits): an HMAC-SHA256 of the job and run under the control plane's
    ``SECRET_KEY``, so every run gets a new one and nothing needs storing. It goes to the
    job's agents only, inside the ``start`` and ``join`` frames (see
    :func:`command_frame`); it is never stored in a command row, so neither the REST
    API, the events nor the browser ever see it (docs/security.md)."""
    return salted_hmac(
        FABRIC_SECRET_SALT, f"job:{job_id}:run:{run_id}", algorithm="sha256"
    ).hexdigest()


def command_frame(command: Command) -> dict[str, Any]:
    """The ``command`` frame an agent receives (JSON-able: it crosses the channel layer).
    A ``start`` payload, and the ``join`` part of a grow's ``scale_workers``, get the
    run's fabric secret added here, at push time."""
    payload = command.payload
    if command.run_id is not None:
        secret = fabric_secret(command.job_id, command.run_id)
        if command.type == Command.Type.START:
            payload = {**payload, "fabric_secret": secret}
        elif isinstance(payload.get("join"), dict):
            payload = {**payload, "join": {**payload["join"], "fabric_secret": secret}}
    return CommandFrame(
        id=command.id,
        job=command.job_id,
        seq=command.seq,
        action=command.type,
        payload=payload,
    ).to_dict()


def commands_create(
    *,
    job: Job,
    nodes: list[Node],
    type: str,
    payload: dict,
    issued_by: str,
    idempotency_key: str | None = None,
    payload_for: Callable[[Node], dict] | None = None,
    message: str | None = None,
) -> list[Command]:
    """One command to every node in ``nodes``: rows first, push after commit. The caller
    holds the job row lock.

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


def cluster_frame(version: ClusterVersion, *, workers_min: int) -> dict[str, Any]:
    """What an agent receives on /ws/agent/ when a job's membership changes; it forwards
    the version and members to the job's workers."""
    return ClusterFrame(
        job=version.job_id,
        version=version.version,
        members=tuple(version.members),
        workers=tuple(version.workers),
        workers_min=workers_min,
    ).to_dict()


def cluster_push(job_id: int) -> None:
    """Push the job's latest cluster version to every agent running its workers (call it
    after commit)."""
    job = Job.objects.get(id=job_id)
    current = selectors.job_cluster_version(job)
    if current is None or job.is_terminal:
        return
    frame = cluster_frame(current, workers_min=job.workers_min)
    for node in selectors.job_active_nodes(job):
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
        current = selectors.job_cluster_version(job)
        if current is not None:
            frames.append(cluster_frame(current, workers_min=job.workers_min))
    return frames
