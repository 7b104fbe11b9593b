"""Commands to running jobs: issued by a user or a policy decision, then acknowledged,
applied or failed by the agents (each reply handled exactly once), or expired when no
agent took them. ``scale_workers`` is handed to ``elastic.job_scale``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from controlplane.errors import Conflict, NotFound, Unprocessable
from controlplane.jobs import outbox, selectors
from controlplane.jobs.lifecycle import SCHEDULER, event_record, job_publish
from controlplane.jobs.models import Command, Event, Job, Node
from controlplane.jobs.services import elastic


@transaction.atomic
def command_issue(
    *, job: Job, type: str, value: Any = None, issued_by: str, idempotency_key: str | None = None
) -> list[Command]:
    """Issue a change to a running job (from a user or a policy decision)."""
    job = Job.objects.select_for_update().get(id=job.id)
    payload = {} if value is None else {"value": value}
    if idempotency_key:
        existing = list(selectors.run_commands(job).filter(idempotency_key=idempotency_key))
        if existing:
            first = existing[0]
            if first.type != type or first.payload.get("value") != payload.get("value"):
                # A retry must be the same request; another one under the same key is a
                # client bug that returning the first command would hide.
                raise Unprocessable(
                    f"Idempotency-Key {idempotency_key!r} was used for command {first.id} "
                    f"({first.type} {first.payload.get('value', '')}); use a new key for "
                    f"another command.".replace(" )", ")"),
                    details={"command": first.id, "type": first.type, "payload": first.payload},
                )
            return existing
    if job.status not in Job.TERMINAL and type != Command.Type.STOP:
        stop = selectors.run_stop_command(job)
        if stop is not None:
            raise Conflict(
                f"Job {job.id} is stopping (stop issued by {stop.issued_by}); it takes no more "
                f"commands in this run.",
                details={"stop_command": stop.id},
            )
    if type == Command.Type.SCALE_WORKERS:
        return elastic.job_scale(
            job, value=value, issued_by=issued_by, idempotency_key=idempotency_key
        )
    if job.status == Job.Status.RESCALING and type != Command.Type.STOP:
        raise Conflict(
            f"Job {job.id} is rescaling (cluster version {job.cluster_version}); only stop is "
            f"accepted until it is running again."
        )
    if job.status not in (Job.Status.RUNNING, Job.Status.SCHEDULING, Job.Status.RESCALING):
        raise Conflict(f"Job {job.id} is {job.status}; commands need a running job.")
    nodes = selectors.job_active_nodes(job)
    if not nodes:
        raise Conflict(f"Job {job.id} has no workers to command.")
    return outbox.commands_create(
        job=job,
        nodes=nodes,
        type=type,
        payload=payload,
        issued_by=issued_by,
        idempotency_key=idempotency_key,
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
        if command.type == Command.Type.SET_BATCH_SIZE and rule != "none" and lr is not None:
            # The workers scaled their learning rate by the job's rule (the adascale gain
            # depends on their noise estimate) and report the value they use; that is the
            # one recorded. A reply without one (a runtime that does not report it) leaves
            # the recorded learning rate as it was rather than guess it here.
            changes["learning_rate"] = lr
        Job.objects.filter(id=job.id).update(**changes)
        transaction.on_commit(lambda: job_publish(job.id))
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
                    actor=SCHEDULER,
                    message=f"{command.type} expired: node {command.node.name} never acknowledged it",
                    data={
                        "command": command.id,
                        "type": command.type,
                        "state": Command.State.EXPIRED,
                    },
                )
    return expired
