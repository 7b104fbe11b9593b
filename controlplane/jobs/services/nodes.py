"""Nodes (agents) and the join tokens they enrol with.

Join tokens: an admin creates one with a use limit and an expiry; each enrolment uses
it once (a conditional update, so two agents racing for the last use cannot both win).
Enrolment exchanges it for a per-node credential, refused — without using the token —
when the agent's protocol is not spoken here or the name belongs to an enrolled node:
a node is never taken over by enrolling under its name.

Then heartbeats (which also tell which of the agent's jobs it should end, and fail the
jobs a restarted agent lost), and what an admin does to a node: drain it (no new
workers go there), revoke it (its credential is refused at once, its socket closed, and
its jobs go on without it as for a lost node) and delete it once no worker runs there.
Nodes silent past the heartbeat timeout are unreachable (their jobs carry on: the
workers outlive their agent); silent past a grace period more they are lost, and their
jobs shrink without them or fail.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from agent.protocol import PROTOCOL_VERSION, vocabulary
from agent.protocol import rest as agent_rest
from agent.protocol.control import CLOSE_NODE_REVOKED
from controlplane.accounts import credentials
from controlplane.celery import enqueue
from controlplane.errors import ApiError, AuthenticationFailed, Conflict, NotFound
from controlplane.jobs import outbox, selectors
from controlplane.jobs.lifecycle import SCHEDULER, job_transition
from controlplane.jobs.models import Command, Job, JoinToken, Node, Worker
from controlplane.jobs.services import membership
from controlplane.live import channels

log = logging.getLogger(__name__)

# jobs/tasks.py: place queued jobs, then grow elastic ones back (also a beat sweep).
PLACE_PENDING_JOBS_TASK = "jobs.place_pending_jobs"

JOIN_TOKEN_DEFAULT_USES = 1
JOIN_TOKEN_DEFAULT_EXPIRY = timedelta(hours=24)

# The agent protocols this control plane speaks: from the oldest still supported to its
# own (agent.protocol.PROTOCOL_VERSION). Upgrade the control plane first, then the agents
# (docs/agent-install.md): a newer control plane speaks the older agents' protocol.
PROTOCOL_OLDEST = 1
PROTOCOL_NEWEST = PROTOCOL_VERSION
# An agent from before versions were sent speaks protocol 1.
PROTOCOL_UNSAID = 1

# A deleted node's agent is refused like any unknown credential; its socket is closed
# with the code a refused client gets (agents reconnect, and their heartbeat says why).
CLOSE_NODE_DELETED = 4401


class IncompatibleProtocol(ApiError):
    code = agent_rest.ERROR_PROTOCOL_INCOMPATIBLE


def join_token_create(
    *,
    label: str = "",
    created_by=None,
    uses: int = JOIN_TOKEN_DEFAULT_USES,
    expires_in: timedelta = JOIN_TOKEN_DEFAULT_EXPIRY,
) -> tuple[JoinToken, str]:
    """A join token good for ``uses`` enrolments within ``expires_in``; returns the row
    and the secret (shown once: only its digest is stored)."""
    secret = credentials.new_secret("join")
    token = JoinToken.objects.create(
        label=label,
        prefix=secret[:12],
        token_hash=credentials.digest(secret),
        created_by=created_by,
        expires_at=timezone.now() + expires_in,
        uses_allowed=uses,
        uses_left=uses,
    )
    return token, secret


def join_token_revoke(*, token_id: int) -> JoinToken:
    """Revoke a join token (nodes enrolled with it keep their credentials)."""
    token = JoinToken.objects.filter(id=token_id).first()
    if token is None:
        raise NotFound(f"Join token {token_id} does not exist.")
    JoinToken.objects.filter(id=token.id, revoked_at__isnull=True).update(revoked_at=timezone.now())
    token.refresh_from_db()
    return token


def _join_token_use(secret: str) -> JoinToken:
    """Use the join token once (atomically: the update only matches while a use is left),
    or say exactly why it cannot be used."""
    digest = credentials.digest(secret)
    now = timezone.now()
    usable = JoinToken.objects.filter(
        token_hash=digest, revoked_at__isnull=True, expires_at__gt=now, uses_left__gt=0
    )
    if usable.update(uses_left=F("uses_left") - 1) == 1:
        return JoinToken.objects.get(token_hash=digest)
    token = JoinToken.objects.filter(token_hash=digest).first()
    ask = "ask an admin for a new one (nodes page → Add a node, or manage.py create_join_token)"
    if token is None:
        raise AuthenticationFailed(
            f"The join token is unknown (mistyped, or from another control plane); {ask}.",
            code=agent_rest.ERROR_JOIN_TOKEN_UNKNOWN,
        )
    if token.revoked_at is not None:
        raise AuthenticationFailed(
            f"Join token {token.prefix}… was revoked on {token.revoked_at:%Y-%m-%d %H:%M} UTC; {ask}.",
            code=agent_rest.ERROR_JOIN_TOKEN_REVOKED,
        )
    if token.expires_at <= now:
        raise AuthenticationFailed(
            f"Join token {token.prefix}… expired on {token.expires_at:%Y-%m-%d %H:%M} UTC; {ask}.",
            code=agent_rest.ERROR_JOIN_TOKEN_EXPIRED,
        )
    raise AuthenticationFailed(
        f"Join token {token.prefix}… is used up: it was good for {token.uses_allowed} "
        f"enrolment(s) and all were made; {ask}.",
        code=agent_rest.ERROR_JOIN_TOKEN_USED_UP,
    )


def protocol_refusal(protocol: int | None) -> str | None:
    """Why an agent speaking ``protocol`` (None: it did not say) cannot be served here, as
    the node's status reason; None when it can."""
    spoken = PROTOCOL_UNSAID if protocol is None else protocol
    if spoken < PROTOCOL_OLDEST:
        return (
            f"upgrade the agent to a version speaking protocol {PROTOCOL_NEWEST} (it speaks "
            f"protocol {spoken}; this control plane speaks {_protocols_spoken()})"
        )
    if spoken > PROTOCOL_NEWEST:
        return (
            f"the agent speaks protocol {spoken}, newer than this control plane "
            f"({_protocols_spoken()}): upgrade the control plane first, or run an agent "
            f"speaking protocol {PROTOCOL_NEWEST}"
        )
    return None


def _protocols_spoken() -> str:
    if PROTOCOL_OLDEST == PROTOCOL_NEWEST:
        return f"protocol {PROTOCOL_NEWEST}"
    return f"protocols {PROTOCOL_OLDEST} to {PROTOCOL_NEWEST}"


def node_enrol(
    *,
    join_token: str,
    name: str,
    address: str,
    slots: int,
    labels: dict[str, str],
    agent_version: str = "",
    protocol: int | None = None,
    code: list[str] | None = None,
) -> tuple[Node, str]:
    """Exchange a join token for a per-node credential (returned once, stored hashed).

    Refused, with the token left unused, when the agent's protocol is not spoken here or
    an enrolled node has the name — unless an admin revoked that node, which this
    enrolment then replaces (the revoked node is deleted, its history kept). An agent
    that still has its credential file never enrols again: it keeps its node.
    """
    refusal = protocol_refusal(protocol)
    if refusal is not None:
        raise IncompatibleProtocol(
            f"Enrolment refused: {refusal}.",
            details={"protocol": protocol, "supported": [PROTOCOL_OLDEST, PROTOCOL_NEWEST]},
        )
    credential = credentials.new_secret("node")
    try:
        with transaction.atomic():
            token = _join_token_use(join_token)
            holder = Node.objects.enrolled().select_for_update().filter(name=name).first()
            if holder is not None and holder.status != Node.Status.REVOKED:
                raise _name_taken(holder)
            if holder is not None:
                Node.objects.filter(id=holder.id).update(deleted_at=timezone.now())
            node = Node.objects.create(
                name=name,
                address=address,
                slots=slots,
                labels=labels,
                credential_hash=credentials.digest(credential),
                status=Node.Status.ONLINE,
                last_heartbeat=timezone.now(),
                agent_version=agent_version,
                protocol=protocol,
                join_token=token,
                code_kinds=_code_kinds(code),
            )
    except IntegrityError:
        # Another agent enrolled the name between our check and our insert.
        holder = Node.objects.enrolled().filter(name=name).first()
        if holder is None:
            raise
        raise _name_taken(holder) from None
    log.info("node %s (id %s) enrolled with join token %s…", name, node.id, token.prefix)
    transaction.on_commit(lambda: enqueue(PLACE_PENDING_JOBS_TASK))
    return node, credential


def _code_kinds(code: list[str] | None) -> list[str]:
    """The kinds of code a node runs, in canonical order (None: its agent did not say)."""
    said = vocabulary.CODE_KINDS_UNSAID if code is None else code
    return [kind for kind in vocabulary.CODE_KINDS if kind in said]


def _name_taken(holder: Node) -> Conflict:
    return Conflict(
        f"A node named {holder.name!r} is enrolled already (node {holder.id}, {holder.status}, "
        f"enrolled {holder.created_at:%Y-%m-%d %H:%M} UTC); enrolling under its name is refused, "
        f"so that no one can take a node over. If this is that machine, give the agent its "
        f"credential file back (AGENT_STATE_DIR/credential). To replace the node, an admin "
        f"revokes or deletes node {holder.name!r} first (nodes page, or POST "
        f"/api/v1/nodes/{holder.id}/revoke/ or DELETE /api/v1/nodes/{holder.id}/); then enrol "
        f"again with a join token. Or choose another AGENT_NAME.",
        code=agent_rest.ERROR_NODE_NAME_TAKEN,
        details={"node": holder.id, "name": holder.name, "status": holder.status},
    )


def node_authenticate(credential: str) -> Node:
    """The node holding ``credential``; a 401 saying why not (unknown, deleted, revoked)."""
    node = (
        Node.objects.filter(credential_hash=credentials.digest(credential)).first()
        if credential
        else None
    )
    if node is not None and node.status == Node.Status.REVOKED:
        raise AuthenticationFailed(
            f"Node {node.name} was revoked: {node.status_reason}",
            code=agent_rest.ERROR_NODE_REVOKED,
        )
    if node is None or node.deleted_at is not None:
        raise AuthenticationFailed(
            "Unknown node credential (the node was deleted, or the control plane's database "
            "is another): enrol the agent again with a join token.",
            code=agent_rest.ERROR_NODE_UNKNOWN,
        )
    return node


def _refuse_incompatible(node: Node, agent_version: str, protocol: int | None) -> None:
    """An agent speaking a protocol this control plane does not makes its node
    ``incompatible`` (placement skips it) and is refused with a 4xx that says what to
    upgrade. Its heartbeat does not count, so its jobs go on without it once the node's
    heartbeats are late (nodes_mark_lost). A revoked node stays revoked."""
    refusal = protocol_refusal(protocol)
    if refusal is None:
        return
    Node.objects.filter(id=node.id).exclude(status=Node.Status.REVOKED).update(
        agent_version=agent_version,
        protocol=protocol,
        status=Node.Status.INCOMPATIBLE,
        status_reason=refusal,
    )
    log.warning("node %s refused: %s", node.name, refusal)
    raise IncompatibleProtocol(
        f"Node {node.name}: {refusal}.",
        details={"protocol": protocol, "supported": [PROTOCOL_OLDEST, PROTOCOL_NEWEST]},
    )


def node_heartbeat(
    *,
    node: Node,
    running_jobs: list[int] | None = None,
    agent_version: str = "",
    protocol: int | None = None,
    code: list[str] | None = None,
    gpus: list[dict] | None = None,
) -> list[int]:
    """Record that the node is alive, and its agent's version, protocol, the kinds of
    code it runs and its GPUs' state (``gpus``: kept as said; None keeps the last) (an agent speaking a protocol not spoken here is refused: see
    _refuse_incompatible).
    ``running_jobs``, when given, is the set of jobs whose workers the agent runs now: a
    job the agent started (its start command applied) but no longer runs lost its
    workers — the agent restarted — and fails with that reason.

    Returns the jobs among ``running_jobs`` the agent should end there: those whose
    current run has no worker on this node that is not failed — the node was taken for
    lost while its agent was away and the job shrank without it or failed, or the job was
    restarted as a new run. Nothing else would stop those workers (durable stop commands
    go to nodes with active workers); they would train on, unseen."""
    _refuse_incompatible(node, agent_version, protocol)
    now = timezone.now()
    # Never over a revocation made since the node was authenticated.
    # An agent that does not say keeps what its node runs (an old agent never says).
    code_kinds = node.code_kinds if code is None else _code_kinds(code)
    Node.objects.filter(id=node.id).exclude(status=Node.Status.REVOKED).update(
        last_heartbeat=now,
        status=Node.Status.ONLINE,
        status_reason="",
        unreachable_since=None,
        agent_version=agent_version,
        protocol=protocol,
        code_kinds=code_kinds,
        gpus=node.gpus if gpus is None else gpus,
    )
    if node.status == Node.Status.UNREACHABLE:
        log.info("node %s is back (unreachable since %s)", node.name, node.unreachable_since)
    if node.status != Node.Status.ONLINE or code_kinds != node.code_kinds:
        # A node back online (or running more kinds of code) may take queued jobs: now.
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


def node_goodbye(*, node: Node, reason: str, detached: list[int]) -> None:
    """The node's agent stops on purpose: the node is offline now (no placement goes there),
    not lost after the heartbeat timeout. Workers it left running (``detached``) stay
    active for the next agent to re-attach; if none comes back within the heartbeat
    timeout and the grace they count as lost (nodes_mark_lost), as for a silent node."""
    reason = (reason or "the agent stopped")[:200]
    updated = (
        Node.objects.filter(id=node.id)
        .exclude(status__in=[Node.Status.REVOKED, Node.Status.INCOMPATIBLE])
        .update(status=Node.Status.OFFLINE, status_reason=reason, last_heartbeat=timezone.now())
    )
    if updated:
        log.info(
            "node %s went offline: %s%s",
            node.name,
            reason,
            f" (workers of job(s) {', '.join(map(str, detached))} left running)"
            if detached
            else "",
        )


def nodes_mark_lost(
    *,
    timeout_s: float,
    grace_s: float = 0.0,
    blind_s: float = 0.0,
    blind_until: datetime | None = None,
) -> list[int]:
    """Silence is a suspicion first, a verdict only after a grace period.

    An online node silent for longer than ``timeout_s`` becomes *unreachable*: nothing
    else changes — its jobs keep their status and its workers, which outlive their agent
    (AGENT_ORPHAN_GRACE_S), train on; when the agent comes back it reports what they did
    meanwhile (finished, failed, still running) and the job ends with that truth. A node
    silent for longer than ``timeout_s + grace_s`` (unreachable, or offline with workers
    its agent left running, or incompatible with workers) is *lost*: an elastic job
    running there shrinks by that node's workers when at least workers_min remain; other
    jobs fail. Returns the ids of the nodes found lost.

    ``blind_s`` is time the control plane itself could not see (its database was down),
    which never counts as a node's silence: it is added to the silence allowed to a node
    whose last heartbeat came before ``blind_until`` (the outage's end; every node when
    None). A node heard from after the outage is judged on its own silence."""
    now = timezone.now()
    blind = timedelta(seconds=max(blind_s, 0.0))

    def silent_for(seconds: float) -> Q:
        cutoff = now - timedelta(seconds=seconds)
        if not blind:
            return Q(last_heartbeat__lt=cutoff)
        if blind_until is None:
            return Q(last_heartbeat__lt=cutoff - blind)
        spans_outage = Q(last_heartbeat__lt=blind_until) & Q(last_heartbeat__lt=cutoff - blind)
        return spans_outage | Q(last_heartbeat__gte=blind_until, last_heartbeat__lt=cutoff)

    suspect = silent_for(timeout_s)
    lost_silence = silent_for(timeout_s + max(grace_s, 0.0))
    for node in Node.objects.filter(suspect, status=Node.Status.ONLINE):
        if (
            Node.objects.filter(suspect, id=node.id, status=Node.Status.ONLINE).update(
                status=Node.Status.UNREACHABLE,
                unreachable_since=now,
                status_reason=f"no heartbeat for {timeout_s:.0f} s; its workers may still be "
                f"training (lost if silent {grace_s:.0f} s more)",
            )
            == 1
        ):
            log.warning("node %s unreachable (no heartbeat for %.0f s)", node.name, timeout_s)
    lost = []
    silent = Node.objects.filter(lost_silence)
    for node in silent.filter(
        Q(status=Node.Status.UNREACHABLE)
        | Q(
            status__in=[Node.Status.INCOMPATIBLE, Node.Status.OFFLINE],
            workers__state__in=Worker.ACTIVE,
        )
    ).distinct():
        silence = timeout_s + grace_s
        reason = f"node {node.name} lost (no heartbeat for {silence:.0f} s)"
        with transaction.atomic():
            if node.status in (Node.Status.UNREACHABLE, Node.Status.OFFLINE):
                # An offline node here said goodbye leaving workers, and no agent came back.
                if (
                    silent.filter(id=node.id, status=node.status).update(
                        status=Node.Status.LOST,
                        unreachable_since=None,
                        status_reason=f"no heartbeat for {silence:.0f} s",
                    )
                    != 1
                ):
                    continue
            else:
                reason = f"node {node.name} is incompatible ({node.status_reason})"
            lost.append(node.id)
            _node_workers_lost(node, reason=reason)
    return lost


def _node_workers_lost(node: Node, *, reason: str) -> None:
    """The node's workers are gone for the control plane (a lost, incompatible or revoked
    node): each of its jobs goes on without them — an elastic one that keeps at least
    workers_min shrinks — or fails with ``reason``. Runs in the caller's transaction."""
    job_ids = (
        Job.objects.filter(workers__node=node, workers__state__in=Worker.ACTIVE)
        .exclude(status__in=Job.TERMINAL)
        .values_list("id", flat=True)
        .distinct()
    )
    for job_id in sorted(job_ids):
        job = Job.objects.select_for_update().get(id=job_id)
        gone_all = list(Worker.objects.filter(job=job, node=node, state__in=Worker.ACTIVE))
        Worker.objects.filter(id__in=[w.id for w in gone_all]).update(state=Worker.State.FAILED)
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
    Worker.objects.filter(node=node, state__in=Worker.ACTIVE).update(state=Worker.State.FAILED)


# --- what an admin does to a node ----------------------------------------------------------


def _node_locked(node_id: int) -> Node:
    node = Node.objects.enrolled().select_for_update().filter(id=node_id).first()
    if node is None:
        raise NotFound(f"Node {node_id} does not exist (or was deleted).")
    return node


@transaction.atomic
def node_set_draining(*, node_id: int, draining: bool, actor: str) -> Node:
    """Drain a node (no new workers are placed there and no grow goes there; those
    running carry on) or take it back into service."""
    node = _node_locked(node_id)
    if node.status == Node.Status.REVOKED:
        raise Conflict(
            f"Node {node.name} is revoked: it runs nothing and takes nothing; delete it instead.",
            details={"node": node.id, "status": node.status},
        )
    if node.draining != draining:
        Node.objects.filter(id=node.id).update(draining=draining)
        log.info("node %s %s by %s", node.name, "drained" if draining else "resumed", actor)
        if not draining:  # room for queued jobs: place them now, not at the sweep
            transaction.on_commit(lambda: enqueue(PLACE_PENDING_JOBS_TASK))
    node.refresh_from_db()
    return node


@transaction.atomic
def node_revoke(*, node_id: int, actor: str) -> Node:
    """Refuse the node's credential from now on and close its command channel; its jobs
    go on without its workers as for a lost node (an elastic job shrinks, another fails
    with the reason). Its agent stops: it is told so on its socket and at its next call."""
    node = _node_locked(node_id)
    if node.status == Node.Status.REVOKED:
        return node
    now = timezone.now()
    Node.objects.filter(id=node.id).update(
        status=Node.Status.REVOKED,
        status_reason=(
            f"revoked by {actor} on {now:%Y-%m-%d %H:%M} UTC; to use this machine again, "
            f"enrol it with a new join token (under this name or another)"
        ),
        draining=False,
    )
    log.warning("node %s revoked by %s", node.name, actor)
    _node_workers_lost(node, reason=f"node {node.name} was revoked by {actor}")
    node_id = node.id
    transaction.on_commit(lambda: channels.close_agent_channel(node_id, CLOSE_NODE_REVOKED))
    transaction.on_commit(lambda: enqueue(PLACE_PENDING_JOBS_TASK))
    node.refresh_from_db()
    return node


@transaction.atomic
def node_delete(*, node_id: int, actor: str) -> None:
    """Remove a node that runs no worker (refused with the jobs that it runs otherwise).
    Its row stays, marked deleted, for the history of the jobs it ran; its name is free
    and its credential no longer works."""
    node = _node_locked(node_id)
    active = list(
        Worker.objects.filter(node=node, state__in=Worker.ACTIVE)
        .select_related("job")
        .order_by("job_id", "rank")
    )
    if active:
        jobs = {w.job_id: w.job.name for w in active}
        named = ", ".join(f"job {job_id} ({name!r})" for job_id, name in sorted(jobs.items()))
        raise Conflict(
            f"Node {node.name} runs {len(active)} worker(s) of {named}: drain it and wait "
            f"until they finish (or cancel those jobs), or revoke it, which takes its jobs "
            f"off it; then delete it.",
            details={"node": node.id, "jobs": sorted(jobs)},
        )
    # A revoked node stays so (its credential keeps saying why); another is offline.
    status = node.status if node.status == Node.Status.REVOKED else Node.Status.OFFLINE
    Node.objects.filter(id=node.id).update(deleted_at=timezone.now(), draining=False, status=status)
    log.info("node %s deleted by %s", node.name, actor)
    node_id = node.id
    transaction.on_commit(lambda: channels.close_agent_channel(node_id, CLOSE_NODE_DELETED))


@transaction.atomic
def node_leave(*, node: Node, reason: str) -> list[int]:
    """The node's agent is about to stop for good (its Slurm allocation ends, is cancelled
    or hits its time limit): drain the node and shrink each elastic job that runs there
    by its workers on this node, in a new cluster version, so they leave at a step
    boundary (nothing is lost) before the agent goes. Returns the jobs still running
    workers there: those that could not shrink (not elastic, rescaling, or at their
    minimum) — they end as for a lost node when the agent goes."""
    Node.objects.filter(id=node.id).update(draining=True)
    actor = f"node:{node.name}"
    kept: list[int] = []
    job_ids = (
        Job.objects.filter(workers__node=node, workers__state__in=Worker.ACTIVE)
        .exclude(status__in=Job.TERMINAL)
        .values_list("id", flat=True)
        .distinct()
    )
    for job_id in sorted(job_ids):
        job = Job.objects.select_for_update().get(id=job_id)
        members = selectors.job_members(job)
        here = [w for w in members if w.node_id == node.id]
        survivors = [w for w in members if w.node_id != node.id]
        busy = (
            selectors.run_commands(job)
            .filter(state__in=Command.IN_FLIGHT)
            .exclude(type=Command.Type.STOP, payload__has_key="joiners")
            .exists()
        )
        if (
            not here
            or not job.is_elastic
            or job.status != Job.Status.RUNNING
            or busy
            or len(survivors) < max(job.workers_min, 1)
        ):
            kept.append(job.id)
            continue
        why = f"node {node.name} leaves ({reason})"
        membership.rescaling_start(
            job, actor=actor, reason=f"{why}: shrinking from {len(members)} to {len(survivors)}"
        )
        outbox.commands_create(
            job=job,
            nodes=selectors.job_active_nodes(job),
            type=Command.Type.SCALE_WORKERS,
            payload={"value": len(survivors)},
            issued_by=actor,
        )
        membership.version_write(
            job,
            survivors,
            actor=actor,
            reason=f"{why}: worker(s) {', '.join(str(w.rank) for w in here)} leave",
        )
    log.info("node %s leaves (%s); drained, job(s) kept: %s", node.name, reason, kept or "none")
    return kept
