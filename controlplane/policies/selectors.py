"""Read-only queries over policies (scoped to what a user may see), their decisions, what
the changes to a job's knobs did (``job_adaptations``), and a run's step-time profile (what
``optimize_goodput`` and the goodput allocator fit)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from agent.protocol import vocabulary
from controlplane.errors import NotFound
from controlplane.jobs.models import Command, Job, Run
from controlplane.metrics import selectors as metric_selectors
from controlplane.policies import goodput, goodput_choice, payoff
from controlplane.policies.models import Decision, Policy, PolicyVersion

# The latest points of each step-time series (goodput_choice.STEP_TIME_SERIES) read for a
# run's profile: the profile keeps 20 per configuration; this bounds the read on a long run
# (5 × 2,000 points per job each time optimize_goodput or the allocator models it: ~30 ms
# to read and ~10 ms to align on the test database). Read afresh each time, not cached
# between evaluations: they run in whichever worker process takes the task, and a cache
# that reads only steps after the last one it saw would keep missing points stored late
# with lower steps (an agent posting its spool after being cut off while another node's
# agent posted later steps), so its profile could differ from a fresh read's.
PROFILE_POINTS = 2000


def policies_visible_to(user) -> QuerySet[Policy]:
    qs = Policy.objects.select_related("owner")
    return qs if user.is_staff else qs.filter(owner=user)


def policy_get_for_user(*, user, policy_id: int) -> Policy:
    policy = policies_visible_to(user).filter(id=policy_id).first()
    if policy is None:
        raise NotFound(f"Policy {policy_id} does not exist or is not yours.")
    return policy


def job_decisions(job: Job, *, run: Run | None = None) -> QuerySet[Decision]:
    """The job's decisions, oldest first: all of its runs', or only ``run``'s."""
    qs = Decision.objects.filter(job=job).select_related("policy", "run").order_by("id")
    return qs.filter(run=run) if run is not None else qs


def policy_versions(policy: Policy) -> QuerySet[PolicyVersion]:
    """Every version of the policy, newest first, with who saved each."""
    return policy.versions.select_related("created_by")


def job_decision_get(job: Job, *, decision_id: int) -> Decision:
    decision = job.decisions.filter(id=decision_id).first()
    if decision is None:
        raise NotFound(f"Job {job.id} has no decision {decision_id}.")
    return decision


# The commands that change a knob of a running job: what the adaptations view measures.
ADAPTATION_ACTIONS = (
    vocabulary.SET_BATCH_SIZE,
    vocabulary.SET_LR,
    vocabulary.SCALE_WORKERS,
    vocabulary.SET_STRATEGY,
    vocabulary.SET_TOPOLOGY,
)
_SERIES = ["throughput", "batch_size", "workers", "lr", "gns"]


@dataclass(frozen=True)
class Adaptation:
    """One change of a job's knobs with what it did (``effect``), the run it was made in
    and, when a policy rule made it, the decision."""

    run: int
    effect: payoff.Effect
    issued_by: str
    created_at: object
    decision: Decision | None


def _state_of(rows: list[Command]) -> tuple[str, int | None]:
    """One logical command (its rows, one per node): applied at the earliest step a node
    applied it (every node applies it at the same step), else in flight, else failed."""
    applied = [c.applied_step for c in rows if c.state == Command.State.APPLIED]
    if applied:
        steps = [s for s in applied if s is not None]
        return "applied", (min(steps) if steps else None)
    for state in (*Command.IN_FLIGHT, Command.State.FAILED):
        if any(c.state == state for c in rows):
            return str(state), None
    return str(rows[0].state), None


def job_base_batch(job: Job) -> float:
    """M0: the batch the job was created with (its learning rate was set for it)."""
    hyper = job.hyperparameters if isinstance(job.hyperparameters, dict) else {}
    batch = hyper.get("batch_size")
    if isinstance(batch, (int, float)) and not isinstance(batch, bool) and batch > 0:
        return float(batch)
    return float(max(job.batch_size, 1))


def job_adaptations(
    job: Job, *, run: Run | None = None, window: int = payoff.DEFAULT_WINDOW
) -> list[Adaptation]:
    """Every change of the job's knobs (a user's, a policy's, the allocator's or the
    scheduler's ``set_batch_size``, ``set_lr``, ``scale_workers``, ``set_strategy``,
    ``set_topology``), oldest first — all runs', or ``run``'s — each with its throughput,
    efficiency and goodput before and after and the time it saved (``payoff``)."""
    commands = Command.objects.filter(job=job, type__in=ADAPTATION_ACTIONS).select_related("run")
    if run is not None:
        commands = commands.filter(run=run)
    groups: dict[tuple[int, int], list[Command]] = {}
    for command in commands.order_by("run__number", "seq", "id"):
        groups.setdefault((command.run.number, command.seq), []).append(command)
    if not groups:
        return []
    decisions = {
        d.command_id: d
        for d in Decision.objects.filter(
            job=job, command_id__in=[c.id for rows in groups.values() for c in rows]
        ).select_related("policy")
    }
    base_batch = job_base_batch(job)
    out: list[Adaptation] = []
    by_run: dict[int, list[tuple[int, list[Command]]]] = {}
    for (number, seq), rows in groups.items():
        by_run.setdefault(number, []).append((seq, rows))
    for number, entries in sorted(by_run.items()):
        run_row = entries[0][1][0].run
        # Strategy and topology are not metric series: the value before a switch is the
        # previous applied switch's, or in run 1 the one the job was created with.
        known = (
            {
                vocabulary.SET_STRATEGY: job.strategy_initial,
                vocabulary.SET_TOPOLOGY: job.topology_initial,
            }
            if number == 1
            else {}
        )
        changes = []
        for seq, rows in entries:
            first = rows[0]
            state, step = _state_of(rows)
            value = first.payload.get("value")
            changes.append(
                payoff.Change(
                    key=seq,
                    action=first.type,
                    value=value,
                    state=state,
                    step=step,
                    issued_by=first.issued_by,
                    value_from=known.get(first.type),
                )
            )
            if state == "applied" and first.type in (
                vocabulary.SET_STRATEGY,
                vocabulary.SET_TOPOLOGY,
            ):
                known[first.type] = value
        raw = metric_selectors.run_whole_job_series(run_row.id, _SERIES)
        series = {
            name: [payoff.Point(step, value, time.timestamp()) for step, value, time in points]
            for name, points in raw.items()
        }
        effects = payoff.adaptation_effects(changes, series, base_batch=base_batch, window=window)
        for (_seq, rows), effect in zip(entries, effects, strict=True):
            decision = next((decisions[c.id] for c in rows if c.id in decisions), None)
            out.append(
                Adaptation(
                    run=number,
                    effect=effect,
                    issued_by=rows[0].issued_by,
                    created_at=rows[0].created_at,
                    decision=decision,
                )
            )
    return out


def run_step_profile(
    run_id: int, *, batch_size: int, workers: int
) -> tuple[goodput.ProfilePoint, ...]:
    """The run's step times per configuration (``goodput_choice.step_profile``) from the
    latest PROFILE_POINTS points of each step-time series; ``batch_size`` and ``workers``
    (the job's now) stand for those series before they are first reported."""
    history = metric_selectors.run_whole_job_latest_series(
        run_id, goodput_choice.STEP_TIME_SERIES, PROFILE_POINTS
    )
    return goodput_choice.step_profile(history, batch_size=batch_size, workers=workers)
