"""Provisioning through Slurm: request nodes when the goodput allocator would put more to
use than the fleet has, release autoscaled nodes that sit idle (SLURM_AUTOSCALE, off by
default; docs/slurm.md).

Every round (the ``slurm.autoscale`` beat task, with the queue sync):

* **release** each autoscaled allocation that is running and whose nodes ran no active
  worker for ``SLURM_AUTOSCALE_IDLE_S`` (counted from the allocation's start or the last
  round that found a worker on its nodes, whichever is later), through
  ``allocation_release`` (scancel; the agents leave cleanly);
* **request** one allocation when no autoscaled one is still queued, the last request is
  ``SLURM_AUTOSCALE_COOLDOWN_S`` old, and ``allocation.extra_nodes`` says more nodes would
  raise the harmonic mean of the modelled elastic jobs' speedups by at least 5 % each:
  as many nodes as that, capped by ``SLURM_AUTOSCALE_MAX_NODES`` nodes in all active
  autoscaled allocations and ``SLURM_AUTOSCALE_MAX_NODES_PER_USER`` for the owner of the
  jobs it is for (the first of them, by id). Its nodes enrol as any allocation's do and the
  allocator (or the jobs' own policies) grows the jobs onto them.

Each request and release is a decision event on the jobs that caused it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from controlplane.errors import ApiError
from controlplane.jobs.lifecycle import event_record
from controlplane.jobs.models import Event, Job, Node, Worker
from controlplane.policies import allocation
from controlplane.policies.provisioning import fleet_view
from controlplane.slurm import sbatch, services
from controlplane.slurm.models import Allocation

log = logging.getLogger(__name__)

ACTOR = "provisioning:slurm"
MIN_GAIN = 0.05


def _record(job_ids: list[int], message: str, data: dict) -> None:
    for job in Job.objects.filter(id__in=job_ids):
        event_record(
            job=job, kind=Event.Kind.DECISION, actor=ACTOR, message=message, data=data,
            step=job.last_step,
        )  # fmt: skip


def _active_autoscaled() -> list[Allocation]:
    return list(Allocation.objects.filter(autoscale=True, status__in=Allocation.ACTIVE))


def release_idle() -> list[int]:
    """Release the running autoscaled allocations whose nodes sat idle; returns their ids."""
    now = timezone.now()
    idle_for = timedelta(seconds=settings.SLURM_AUTOSCALE_IDLE_S)
    released = []
    for alloc in _active_autoscaled():
        if alloc.status != Allocation.Status.RUNNING:
            continue
        nodes = Node.objects.filter(labels__slurm_allocation=str(alloc.id))
        if Worker.objects.filter(node__in=nodes, state__in=Worker.ACTIVE).exists():
            Allocation.objects.filter(id=alloc.id).update(busy_at=now)
            continue
        since = max(d for d in (alloc.created_at, alloc.busy_at) if d)
        if now - since < idle_for:
            continue
        try:
            services.allocation_release(allocation_id=alloc.id)
        except ApiError as exc:
            log.warning("could not release idle allocation %s: %s", alloc.id, exc.message)
            continue
        idle_s = round((now - since).total_seconds())
        _record(
            list(alloc.requested_for),
            f"released Slurm allocation {alloc.id} ({alloc.nodes} node(s)): no worker on its "
            f"nodes for {idle_s} s",
            {"allocation": alloc.id, "nodes": alloc.nodes, "idle_s": idle_s},
        )
        released.append(alloc.id)
    return released


def request_if_wanted(*, server: str) -> Allocation | None:
    """Ask Slurm for nodes when the allocator would use them (within the limits)."""
    active = _active_autoscaled()
    if any(a.status in (Allocation.Status.SUBMITTING, Allocation.Status.PENDING) for a in active):
        return None  # one request at a time: wait until Slurm has started the last
    last = Allocation.objects.filter(autoscale=True).order_by("-created_at").first()
    cooldown = timedelta(seconds=settings.SLURM_AUTOSCALE_COOLDOWN_S)
    if last is not None and timezone.now() - last.created_at < cooldown:
        return None
    room = settings.SLURM_AUTOSCALE_MAX_NODES - sum(a.nodes for a in active)
    if room <= 0:
        return None
    fleet = fleet_view()
    if not fleet.demands:
        return None
    extra = allocation.extra_nodes(
        fleet.demands,
        fleet.slots,
        slots_per_node=fleet.slots_per_node,
        max_nodes=room,
        min_gain=MIN_GAIN,
    )
    if extra.nodes == 0 or not extra.for_jobs:
        return None
    owner = Job.objects.get(id=extra.for_jobs[0]).owner
    theirs = (
        Allocation.objects.filter(
            autoscale=True, status__in=Allocation.ACTIVE, created_by=owner
        ).aggregate(n=Sum("nodes"))["n"]
        or 0
    )
    nodes = min(extra.nodes, settings.SLURM_AUTOSCALE_MAX_NODES_PER_USER - theirs)
    if nodes <= 0:
        return None
    request = sbatch.Request(
        nodes=nodes,
        partition=settings.SLURM_AUTOSCALE_PARTITION,
        gres=settings.SLURM_AUTOSCALE_GRES,
        time_limit=settings.SLURM_AUTOSCALE_TIME,
    )
    data = {
        "nodes": nodes,
        "for_jobs": list(extra.for_jobs),
        "speedup_mean_now": round(extra.objective_now, 4),
        "speedup_mean_with": round(extra.objective_with, 4),
    }
    try:
        alloc = services.allocation_create(request=request, server=server, created_by=owner)
    except ApiError as exc:
        _record(
            list(extra.for_jobs),
            f"could not request {nodes} Slurm node(s): {exc.message}",
            {**data, "error": exc.message},
        )
        return None
    Allocation.objects.filter(id=alloc.id).update(
        autoscale=True, requested_for=list(extra.for_jobs)
    )
    alloc.refresh_from_db()
    _record(
        list(extra.for_jobs),
        f"requested Slurm allocation {alloc.id} ({nodes} node(s)): the jobs' harmonic-mean "
        f"speedup would go from {extra.objective_now:.2f} to {extra.objective_with:.2f}",
        {**data, "allocation": alloc.id},
    )
    return alloc


def autoscale() -> None:
    if not (settings.SLURM_ENABLED and settings.SLURM_AUTOSCALE):
        return
    if not settings.CONTROL_PLANE_URL:
        log.warning("SLURM_AUTOSCALE needs CONTROL_PLANE_URL: the URL its agents enrol at")
        return
    release_idle()
    request_if_wanted(server=settings.CONTROL_PLANE_URL)
