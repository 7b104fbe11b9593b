"""Goodput-driven provisioning: move slots between running elastic jobs so that the
harmonic mean of their speedups is highest (``allocation.allocate``), through the same
``scale_workers`` commands a user or a policy issues.

Run by the ``policies.allocate_cluster`` beat task every ``GOODPUT_ALLOCATOR_INTERVAL_S``
seconds when that is set (off by default). Only jobs that can be modelled take part: an
elastic, running job whose current run has reported ``gns`` and at least
``goodput_choice.GOODPUT_MIN_SAMPLES`` steps with ``compute_time`` and ``comm_time``; the others
keep what they have. Each is modelled as ``optimize_goodput`` models it
(``goodput_choice.job_model``): step times from the run's profile per configuration
(``selectors.run_step_profile``, so a worker count or batch the job has left still informs
the fit), the noise scale from its latest ``WINDOW`` reports. Slots that pending jobs need to start (their minimum) are left free
for the scheduler. A change costs the job ``GOODPUT_RESTART_S`` seconds (its workers
re-form), weighed by the allocator as its restart penalty. A job the allocator moved is
held at its count for ``COOLDOWN_ROUNDS`` rounds: its workers re-form and report at the
new size before it is modelled again, and the slot a shrink frees goes to the job it was
freed for (re-modelled at once on a loaded machine, the shrunk job could win it back in the
next round and the two would trade the slot for ever).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import timedelta

from django.db.models import F, Sum
from django.utils import timezone

from agent.protocol import vocabulary
from controlplane.errors import ApiError
from controlplane.jobs import selectors as job_selectors
from controlplane.jobs.lifecycle import event_record
from controlplane.jobs.models import Command, Event, Job, Node
from controlplane.jobs.services.commands import command_issue
from controlplane.metrics import selectors as metric_selectors
from controlplane.policies import allocation, goodput_choice, rules
from controlplane.policies import selectors as policy_selectors

log = logging.getLogger(__name__)

ACTOR = "provisioning:goodput"
# The latest gns points whose mean is a job's noise scale (the step times come from the
# run's profile: selectors.PROFILE_POINTS points of each series).
WINDOW = 50
# Rounds a job the allocator moved keeps its new count (see the module's docstring).
COOLDOWN_ROUNDS = 3


@dataclass(frozen=True)
class Move:
    job_id: int
    workers_from: int
    workers_to: int
    carried_out: bool
    reason: str = ""


def job_demand(job: Job) -> allocation.JobDemand | None:
    """The allocator's view of a running elastic job, or None when its run has not
    reported enough to model it."""
    if job.current_run_id is None:
        return None
    state = rules.JobState(
        step=job.last_step,
        batch_size=job.batch_size,
        lr=job.learning_rate,
        workers=job.workers_current,
        seconds_running=0.0,
        metrics={},
        peak={},
        recent=metric_selectors.run_whole_job_latest_series(job.current_run_id, ("gns",), WINDOW),
        profile=policy_selectors.run_step_profile(
            job.current_run_id, batch_size=job.batch_size, workers=job.workers_current
        ),
    )
    if not state.profile:
        return None
    # From one batch size, the cautious guess (no fixed cost): the allocator moves workers,
    # not batches, so the prior's optimism (which makes optimize_goodput try a second batch
    # size) would go uncorrected here.
    model = goodput_choice.job_model(state, single_batch_fixed_share=0.0)
    if model is None:
        return None
    return allocation.JobDemand(
        key=job.id,
        model=model,
        current=job.workers_current,
        min_workers=job.workers_min,
        max_workers=job.workers_max,
        # The batch the job would run at with each count: its best within a factor of now
        # (what optimize_goodput may move it to), never below one sample per worker.
        min_batch=max(1, int(job.batch_size / goodput_choice.GOODPUT_MAX_FACTOR)),
        max_batch=int(job.batch_size * goodput_choice.GOODPUT_MAX_FACTOR),
    )


@dataclass(frozen=True)
class Fleet:
    """The modelled elastic jobs and the slots they may share: theirs plus the free ones
    that pending jobs do not need to start."""

    demands: list[allocation.JobDemand]
    slots: int
    slots_per_node: int


def fleet_view() -> Fleet:
    running = list(
        Job.objects.filter(status=Job.Status.RUNNING, workers_min__lt=F("workers_max"))
        .exclude(current_run__isnull=True)
        .order_by("id")
    )
    demands = [d for d in (job_demand(job) for job in running) if d is not None]
    nodes = {n.id: n for n in Node.objects.schedulable()}
    capacities = job_selectors.node_capacities(nodes)
    free = sum(max(c.free_slots, 0) for c in capacities)
    reserved = (
        Job.objects.filter(status=Job.Status.PENDING).aggregate(n=Sum("workers_min"))["n"] or 0
    )
    slots = sum(d.current for d in demands) + max(0, free - reserved)
    slots_per_node = max((n.slots for n in nodes.values()), default=1)
    return Fleet(demands, slots, slots_per_node)


def cluster_allocate(*, interval_s: float, restart_s: float) -> list[Move]:
    """Reallocate slots among the modelled elastic jobs once; returns what it asked."""
    fleet = fleet_view()
    demands, slots, slots_per_node = fleet.demands, fleet.slots, fleet.slots_per_node
    if not demands:
        return []
    recently_moved = set(
        Command.objects.filter(
            job_id__in=[d.key for d in demands],
            type=vocabulary.SCALE_WORKERS,
            issued_by=ACTOR,
            created_at__gte=timezone.now() - timedelta(seconds=COOLDOWN_ROUNDS * interval_s),
        ).values_list("job_id", flat=True)
    )
    demands = [
        replace(d, min_workers=d.current, max_workers=d.current) if d.key in recently_moved else d
        for d in demands
    ]
    penalty = min(0.9, restart_s / interval_s) if interval_s > 0 else 0.0
    plan = allocation.allocate(
        demands, slots, slots_per_node=slots_per_node, restart_penalty=penalty
    )
    moves = []
    # Shrinks first: they free the slots the grows take.
    changes = sorted(
        ((d, plan[d.key]) for d in demands if plan[d.key] != d.current and plan[d.key] > 0),
        key=lambda change: change[1] - change[0].current,
    )
    for demand, workers in changes:
        job = Job.objects.get(id=demand.key)
        speedup = allocation.speedups(
            demand, fair_share=max(1, slots // len(demands)), slots_per_node=slots_per_node
        )
        reason = (
            f"goodput allocation: {demand.current} → {workers} workers (speedup "
            f"{speedup[demand.current]:.2f} → {speedup[workers]:.2f} against a fair share)"
        )
        data = {
            "workers_from": demand.current,
            "workers_to": workers,
            "speedup_from": round(speedup[demand.current], 4),
            "speedup_to": round(speedup[workers], 4),
        }
        # The decision is logged before the command it causes (as policy decisions are).
        event_record(
            job=job, kind=Event.Kind.DECISION, actor=ACTOR, message=reason, data=data,
            step=job.last_step,
        )  # fmt: skip
        try:
            command_issue(
                job=job,
                type=vocabulary.SCALE_WORKERS,
                value=workers,
                issued_by=ACTOR,
                idempotency_key=f"goodput-{job.id}-v{job.cluster_version}-{workers}",
            )
        except ApiError as exc:
            # Another command in flight, no room on the nodes the job may use, …
            event_record(
                job=job,
                kind=Event.Kind.DECISION,
                actor=ACTOR,
                message=f"goodput allocation {demand.current} → {workers} workers was not "
                f"carried out: {exc.message}",
                data={**data, "error": exc.message},
                step=job.last_step,
            )
            moves.append(Move(job.id, demand.current, workers, False, exc.message))
            continue
        moves.append(Move(job.id, demand.current, workers, True, reason))
    return moves
