"""Writes for policies (create, new versions, enable/disable, delete, approvals), the
evaluation of a job's policy into decisions and commands, and replays on recorded metrics."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from controlplane.errors import ApiError, Conflict, InvalidInput
from controlplane.jobs import selectors as job_selectors
from controlplane.jobs.lifecycle import event_record
from controlplane.jobs.models import Command, Event, Job, Run
from controlplane.jobs.services.commands import command_issue
from controlplane.metrics import selectors as metric_selectors
from controlplane.policies import engine, goodput, goodput_choice, replay, rules
from controlplane.policies import selectors as policy_selectors
from controlplane.policies.models import Decision, Policy, PolicyVersion

log = logging.getLogger(__name__)


def policy_validate(document: Any) -> rules.Policy:
    try:
        return engine.parse_policy(document)
    except engine.PolicyError as exc:
        details = {"path": exc.path}
        if exc.position is not None:
            details["position"] = exc.position
        raise InvalidInput(str(exc), details=details) from None


@transaction.atomic
def policy_create(*, owner, definition: dict[str, Any]) -> Policy:
    parsed = policy_validate(definition)
    policy = Policy.objects.create(
        owner=owner,
        name=parsed.name,
        description=str(definition.get("description", "")),
        definition=definition,
    )
    PolicyVersion.objects.create(policy=policy, version=1, definition=definition, created_by=owner)
    return policy


def policy_set_enabled(*, policy: Policy, enabled: bool) -> Policy:
    """Turn a policy on or off. A disabled policy is not evaluated (jobs keep running with
    the knobs they have); its jobs' hysteresis counters restart, since conditions seen
    before the pause say nothing about the metrics after it."""
    with transaction.atomic():
        changed = (
            Policy.objects.filter(id=policy.id)
            .exclude(enabled=enabled)
            .update(enabled=enabled, updated_at=timezone.now())
        )
        if changed:
            Job.objects.filter(policy_id=policy.id).update(policy_state={})
    policy.refresh_from_db()
    return policy


@transaction.atomic
def policy_update(*, policy: Policy, definition: dict[str, Any], user) -> Policy:
    """Save a new version; earlier versions stay readable. Running jobs use it from their
    next evaluation (each decision records the version it came from)."""
    parsed = policy_validate(definition)
    policy = Policy.objects.select_for_update().get(id=policy.id)
    policy.version += 1
    policy.definition = definition
    policy.name = parsed.name
    policy.description = str(definition.get("description", ""))
    policy.save()
    PolicyVersion.objects.create(
        policy=policy, version=policy.version, definition=definition, created_by=user
    )
    # Hysteresis counters belong to the old rules.
    Job.objects.filter(policy=policy).update(policy_state={})
    return policy


@transaction.atomic
def policy_delete(*, policy: Policy) -> None:
    """Delete a policy that no unfinished job uses; finished jobs keep their record
    without it (their decisions go with it; their audit events stay).

    Deleting a policy from under a job that is still running would change what that job
    does without anyone asking it to, so it is refused: disable the policy, or wait
    for (or cancel) the job first. The policy's row is locked first, so a job created
    with it at the same time either is seen here or waits for the delete.
    """
    locked = Policy.objects.select_for_update().filter(id=policy.id).first()
    if locked is None:
        return
    active = list(
        Job.objects.filter(policy_id=policy.id)
        .exclude(status__in=Job.TERMINAL)
        .order_by("id")
        .values_list("id", flat=True)
    )
    if active:
        jobs = ", ".join(f"#{job_id}" for job_id in active)
        raise Conflict(
            f"Policy {locked.name!r} is used by unfinished job(s) {jobs}; disable the policy instead, "
            f"or delete it once those jobs have ended.",
            details={"jobs": active},
        )
    locked.delete()


@transaction.atomic
def decision_resolve(*, decision: Decision, approve: bool, user) -> Decision:
    """Approve (issue the command now) or reject a decision that waits for approval."""
    decision = (
        Decision.objects.select_for_update().select_related("job", "policy").get(id=decision.id)
    )
    if decision.outcome != Decision.Outcome.PENDING_APPROVAL:
        raise Conflict(f"Decision {decision.id} is {decision.outcome}, not waiting for approval.")
    if approve and decision.run_id is not None and decision.run_id != decision.job.current_run_id:
        # Its inputs were another attempt's; acting on them in this one would be a guess.
        raise Conflict(
            f"Decision {decision.id} was made in run {decision.run.number}, which has ended; "
            f"it can be rejected, not approved.",
            details={"run": decision.run.number},
        )
    actor = f"user:{user.username}"
    if approve:
        commands = command_issue(
            job=decision.job,
            type=decision.action["type"],
            value=decision.action.get("value"),
            issued_by=f"policy:{decision.policy.name}/{decision.rule} (approved by {user.username})",
            idempotency_key=f"decision-{decision.id}",
        )
        decision.command = commands[0]
        decision.outcome = Decision.Outcome.APPROVED
    else:
        decision.outcome = Decision.Outcome.REJECTED
    decision.decided_by = actor
    decision.save(update_fields=["command", "outcome", "decided_by"])
    event_record(
        job=decision.job,
        kind=Event.Kind.DECISION,
        actor=actor,
        message=f"{'approved' if approve else 'rejected'} rule {decision.rule!r}: "
        f"{decision.action['type']} → {decision.action.get('value')}",
        data={
            "decision": decision.id,
            "rule": decision.rule,
            "action": decision.action,
            "outcome": decision.outcome,
        },
        step=decision.step,
    )
    return decision


def job_policy_set(*, job: Job, policy: Policy | None, user) -> Job:
    """Attach ``policy`` to a job (replacing the one it had) or detach it (None). A running
    job is evaluated with it from its next evaluation, its rules starting afresh (no
    hysteresis carried over from another policy); a finished one keeps it for a restart.
    Recorded as an event."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(id=job.id)
        before = job.policy
        if (before.id if before else None) == (policy.id if policy else None):
            return job
        Job.objects.filter(id=job.id).update(
            policy=policy,
            policy_version=policy.version if policy is not None else None,
            policy_state={},
        )
        what = (
            f"policy {policy.name!r} (version {policy.version}) attached"
            if policy is not None
            else "policy detached"
        )
        if before is not None and policy is not None:
            what += f", replacing {before.name!r}"
        elif before is not None:
            what = f"policy {before.name!r} detached"
        event_record(
            job=job,
            kind=Event.Kind.STATE,
            actor=f"user:{user.username}",
            message=what,
            data={
                "policy": policy.id if policy is not None else None,
                "previous": before.id if before is not None else None,
            },
            step=job.last_step,
        )
    job.refresh_from_db()
    return job


def _histories(job: Job, policy: Policy) -> dict[str, rules.RuleHistory]:
    """Each rule's past in the job's current run: a restart starts every rule afresh
    (no cooldown, ``last_fire`` or ``max_per_hour`` count carried over from a run before)."""
    now = timezone.now()
    histories = {}
    for rule in policy.definition.get("rules", []):
        name = rule.get("name")
        fired = Decision.objects.filter(
            run_id=job.current_run_id, policy=policy, rule=name
        ).exclude(outcome__in=[Decision.Outcome.SKIPPED, Decision.Outcome.REJECTED])
        last = fired.order_by("-id").first()
        histories[name] = rules.RuleHistory(
            fired_last_hour=fired.filter(created_at__gte=now - timedelta(hours=1)).count(),
            last_fired_step=last.step if last else None,
            last_fired_age_s=(now - last.created_at).total_seconds() if last else None,
            consecutive_true=int(job.policy_state.get(name, {}).get("consecutive_true", 0)),
            last_fire=dict(last.inputs) if last else {},
        )
    return histories


def job_policy_evaluate(*, job_id: int) -> list[Decision]:
    """Evaluate a running job's policy once; a firing rule becomes a decision and a command.

    Skipped while a command of the job is still in flight, so that a rule never acts
    twice on a value the workers have not applied yet. Evaluations of one job are
    serialised by its row lock (the beat and fresh metrics may trigger two at once).
    """
    with transaction.atomic():
        if not list(Job.objects.select_for_update().filter(id=job_id).values_list("id", flat=True)):
            return []
        return _job_policy_evaluate_locked(job_id)


def _job_policy_evaluate_locked(job_id: int) -> list[Decision]:
    job = Job.objects.select_related("policy").filter(id=job_id).first()
    if (
        job is None
        or job.policy is None
        or not job.policy.enabled
        or job.status != Job.Status.RUNNING
    ):
        return []
    if Command.objects.filter(job=job, state__in=Command.IN_FLIGHT).exists():
        return []
    if job_selectors.run_stop_command(job) is not None:
        return []  # the job is stopping: nothing a rule does would be carried out
    if Decision.objects.filter(
        run_id=job.current_run_id, outcome=Decision.Outcome.PENDING_APPROVAL
    ).exists():
        return []  # one question to the user at a time (an earlier run's are moot)
    policy = job.policy
    if job.policy_version != policy.version:
        # The policy was edited (or the job predates version tracking): record which version
        # the job runs with from now on.
        Job.objects.filter(id=job.id).update(policy_version=policy.version)
        event_record(
            job=job,
            kind=Event.Kind.STATE,
            actor=f"policy:{policy.name}",
            message=f"now evaluated with policy {policy.name!r} version {policy.version}"
            + (f" (was {job.policy_version})" if job.policy_version else ""),
            data={
                "policy": policy.id,
                "policy_version": policy.version,
                "previous": job.policy_version,
            },
            step=job.last_step,
        )
        job.policy_version = policy.version
    parsed = engine.parse_policy(policy.definition)
    latest, peak, recent = metric_selectors.run_whole_job_latest(job.current_run_id, parsed.window)
    profile: tuple[goodput.ProfilePoint, ...] = ()
    if goodput_choice.uses_profile(parsed):
        # Its step-time fit reads the run's measurements of every batch size, not the window.
        profile = policy_selectors.run_step_profile(
            job.current_run_id, batch_size=job.batch_size, workers=job.workers_current
        )
    state = rules.JobState(
        step=job.last_step,
        batch_size=job.batch_size,
        lr=job.learning_rate,
        workers=job.workers_current,
        seconds_running=(timezone.now() - (job.started_at or job.created_at)).total_seconds(),
        metrics=latest,
        peak=peak,
        recent=recent,
        profile=profile,
        strategy=job.strategy,
        topology=job.topology,
    )
    outcomes = engine.evaluate_policy(parsed, state, _histories(job, policy))
    decisions = []
    with transaction.atomic():
        Job.objects.filter(id=job.id).update(
            policy_state={o.rule: {"consecutive_true": o.consecutive_true} for o in outcomes}
        )
        for outcome in outcomes:
            firing = outcome.firing
            if firing is None:
                continue
            action = {"type": firing.action_type, "value": firing.value}
            actor = f"policy:{policy.name}/{firing.rule}"
            rule = next(r for r in parsed.rules if r.name == firing.rule)
            if parsed.dry_run:
                outcome = Decision.Outcome.DRY_RUN
            elif rule.requires_approval:
                outcome = Decision.Outcome.PENDING_APPROVAL
            else:
                outcome = Decision.Outcome.COMMANDED
            decision = Decision.objects.create(
                job=job,
                run_id=job.current_run_id,
                policy=policy,
                policy_version=policy.version,
                rule=firing.rule,
                step=job.last_step,
                inputs=firing.inputs,
                action=action,
                outcome=outcome,
            )
            suffix = {
                Decision.Outcome.DRY_RUN: " (dry run)",
                Decision.Outcome.PENDING_APPROVAL: " (waiting for approval)",
            }.get(outcome, "")
            # The decision is logged before the command it causes, so the audit log reads
            # in cause-and-effect order.
            event_record(
                job=job,
                kind=Event.Kind.DECISION,
                actor=actor,
                message=f"rule {firing.rule!r} fired: {firing.action_type} → {firing.value}{suffix}",
                data={
                    "decision": decision.id,
                    "rule": firing.rule,
                    "inputs": firing.inputs,
                    "action": action,
                    "outcome": outcome,
                    "policy_version": policy.version,
                },
                step=job.last_step,
            )
            if outcome == Decision.Outcome.COMMANDED:
                try:
                    with transaction.atomic():
                        commands = command_issue(
                            job=job,
                            type=firing.action_type,
                            value=firing.value,
                            issued_by=actor,
                            idempotency_key=f"policy-{policy.id}-{firing.rule}-{job.last_step}",
                        )
                except ApiError as exc:
                    # The job cannot take this action now (a scale beyond its bounds or the
                    # free slots, a job that is not elastic, …): record why, act on nothing.
                    decision.outcome = Decision.Outcome.SKIPPED
                    decision.decided_by = f"control plane: {exc.message}"[:200]
                    Decision.objects.filter(id=decision.id).update(
                        outcome=decision.outcome, decided_by=decision.decided_by
                    )
                    event_record(
                        job=job,
                        kind=Event.Kind.DECISION,
                        actor=actor,
                        message=f"rule {firing.rule!r}: {firing.action_type} → {firing.value} was not "
                        f"carried out: {exc.message}",
                        data={
                            "decision": decision.id,
                            "rule": firing.rule,
                            "action": action,
                            "outcome": decision.outcome,
                            "error": exc.message,
                        },
                        step=job.last_step,
                    )
                else:
                    Decision.objects.filter(id=decision.id).update(command=commands[0])
            decisions.append(decision)
            # One action per evaluation: the next waits until this one is applied.
            break
    return decisions


MAX_REPLAY_TICKS = 20_000


def policy_replay(*, policy: Policy, job: Job, run: Run | None) -> dict[str, Any]:
    """What the saved ``policy`` (its current version) would have decided on ``run`` of
    ``job`` (see replay_on_job)."""
    parsed = policy_validate(policy.definition)
    return {
        "policy": policy.id,
        "version": policy.version,
        **replay_on_job(policy=parsed, job=job, run=run),
    }


def definition_replay(*, policy: rules.Policy, job: Job, run: Run | None) -> dict[str, Any]:
    """The same for a definition that is not saved (the editor's draft): already parsed,
    so that a bad definition is refused before the job is looked at."""
    return {"policy": None, "version": None, **replay_on_job(policy=policy, job=job, run=run)}


def replay_on_job(*, policy: rules.Policy, job: Job, run: Run | None) -> dict[str, Any]:
    """What ``policy`` would have decided on the recorded whole-job metrics of ``run`` of
    ``job`` (None: the job has no run yet, so nothing was recorded).

    The job's knobs at each tick are the recorded ones (``batch_size``, ``lr``,
    ``workers`` series when present, else the job's current values): a replay shows when
    and what the policy would have asked, given what actually happened. One run at a
    time: each counts its steps from its own start.
    """
    ticks: list[replay.Tick] = []
    rows = metric_selectors.run_whole_job_points(run.id if run is not None else None)
    for step, name, value, time in rows:
        if not ticks or ticks[-1].step != step:
            ticks.append(replay.Tick(step=step, time=time.timestamp(), values={}))
        ticks[-1].values[name] = value
    start = (
        (run.started_at or run.created_at)
        if run is not None
        else (job.started_at or job.created_at)
    ).timestamp()
    result = replay.replay(
        policy,
        ticks,
        start_time=start,
        defaults=replay.Knobs(
            batch_size=job.batch_size,
            lr=job.learning_rate,
            workers=job.workers_current or job.workers_initial,
            strategy=job.strategy,
            topology=job.topology,
        ),
        max_ticks=MAX_REPLAY_TICKS,
    )
    return {"job": job.id, "run": run.number if run is not None else None, **result}
