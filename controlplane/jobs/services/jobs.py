"""A job's own life as its user sees it: create (with its node selector checked), cancel,
and restart as a new run (from the job's latest checkpoint, one asked for, or from
scratch). Placement runs in a Celery task, queued by name after commit."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from agent.protocol.control import StopPayload
from controlplane.bundles.selectors import bundle_get
from controlplane.bundles.services import bundle_check_permission
from controlplane.celery import enqueue
from controlplane.errors import Conflict, InvalidInput, Unprocessable, json_type
from controlplane.jobs import outbox, selectors
from controlplane.jobs.lifecycle import event_record, job_transition
from controlplane.jobs.models import ENTRYPOINT_FORM, ENTRYPOINTS, Command, Event, Job, Run
from controlplane.jobs.services import housekeeping, membership
from controlplane.live import channels

# jobs/tasks.py: place one job (the beat's jobs.place_pending_jobs sweep does it too).
PLACE_JOB_TASK = "jobs.place_job"

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


def job_create_idempotent(
    *, owner, idempotency_key: str, fingerprint: str, **spec: Any
) -> tuple[Job, bool]:
    """``job_create`` under a client's Idempotency-Key: (job, created). The same key and
    the same request (``fingerprint``, the body's sha256) return the job it made the first
    time; the same key with another request is a 422, never a second job or a silent
    mismatch."""

    def earlier() -> Job | None:
        job = Job.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if job is not None and job.request_fingerprint != fingerprint:
            raise Unprocessable(
                f"Idempotency-Key {idempotency_key!r} was used to create job {job.id} with "
                f"another request; use a new key for a new job.",
                details={"job": job.id, "idempotency_key": idempotency_key},
            )
        return job

    job = earlier()
    if job is not None:
        return job, False
    try:
        with transaction.atomic():
            return (
                job_create(
                    owner=owner,
                    idempotency_key=idempotency_key,
                    request_fingerprint=fingerprint,
                    **spec,
                ),
                True,
            )
    except IntegrityError:
        job = earlier()  # a concurrent request with the same key won the race
        if job is None:
            raise
        return job, False


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
    bundle_digest: str = "",
    idempotency_key: str = "",
    request_fingerprint: str = "",
    labels: dict[str, str] | None = None,
) -> Job:
    if (entrypoint or "").endswith(".py"):
        raise InvalidInput(
            f"The entrypoint {entrypoint!r} names a file: name its module, "
            f"{entrypoint[:-3].replace('/', '.')!r} (package.module, or package.module:function).",
            details={"entrypoint": entrypoint},
        )
    if not ENTRYPOINT_FORM.match(entrypoint or ""):
        raise InvalidInput(
            f"The entrypoint {entrypoint!r} is not a module: use package.module (run like "
            "python -m) or package.module:function (called with no arguments), e.g. "
            f"train or train:main; examples: {', '.join(sorted(ENTRYPOINTS))}.",
            details={"entrypoint": entrypoint},
        )
    if bundle_digest:
        bundle_check_permission(owner)
        bundle_get(bundle_digest)  # a 404 naming the digest when it was never uploaded
    if not workers_min <= workers_initial <= workers_max:
        raise InvalidInput(
            "Workers must satisfy min ≤ initial ≤ max.",
            details={
                "workers": {"min": workers_min, "initial": workers_initial, "max": workers_max}
            },
        )
    node_selector = node_selector_clean(node_selector)
    labels = housekeeping.labels_clean(labels)
    job = Job.objects.create(
        labels=labels,
        owner=owner,
        name=name,
        entrypoint=entrypoint,
        hyperparameters=hyperparameters,
        workers_initial=workers_initial,
        workers_min=workers_min,
        workers_max=workers_max,
        strategy=strategy,
        topology=topology,
        strategy_initial=strategy,
        topology_initial=topology,
        policy=policy,
        node_selector=node_selector,
        bundle_digest=bundle_digest,
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
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
    transaction.on_commit(lambda: enqueue(PLACE_JOB_TASK, job.id))
    return job


def job_cancel(*, job: Job, actor: str) -> Job:
    with transaction.atomic():
        job = Job.objects.select_for_update().get(id=job.id)
        if job.is_terminal:
            raise Conflict(f"Job {job.id} is already {job.status}.")
        was_placed = job.status != Job.Status.PENDING
        job_transition(
            job,
            to=Job.Status.CANCELLED,
            allowed_from=tuple(s for s in Job.Status.values if s not in Job.TERMINAL),
            actor=actor,
            reason="cancelled",
            finished_at=timezone.now(),
        )
        if was_placed:
            nodes = selectors.job_active_nodes(job)
            if nodes:
                outbox.commands_create(
                    job=job,
                    nodes=nodes,
                    type=Command.Type.STOP,
                    payload=StopPayload().to_dict(),
                    issued_by=actor,
                )
            membership.scale_commands_finish(job, step=None, paused_s=None)
    return job


# job_restart's ``resume_from`` when the caller gave none: the job's latest checkpoint.
LATEST_CHECKPOINT = object()


def _restart_resume(job: Job, resume_from: Any) -> tuple[str, int | None, str]:
    """(folder, step, note) for a restarted run: what it resumes from and why."""
    if resume_from is None:
        return "", None, "trains from scratch, as asked (resume_from: null)"
    if resume_from is not LATEST_CHECKPOINT:
        latest = selectors.job_latest_checkpoint(job)
        step = latest[1] if latest and latest[0] == resume_from else None
        return resume_from, step, "resumes from the checkpoint asked for (resume_from)"
    latest = selectors.job_latest_checkpoint(job)
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

    A run trained from scratch starts with the job's spec (batch size, learning rate,
    strategy and topology as created); a resumed one with the values the job had last (the
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
                "strategy": job.strategy_initial,
                "topology": job.topology_initial,
            }
        )
        why = f" ({reason})" if reason else ""
        job_transition(
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
        transaction.on_commit(lambda: enqueue(PLACE_JOB_TASK, job.id))
    run.refresh_from_db()
    return run
