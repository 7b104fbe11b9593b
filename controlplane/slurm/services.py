"""Slurm allocations: submit one (a join token minted for it, then sbatch), release one
(scancel: Slurm signals its agents, which shrink their jobs' workers away and leave), and
follow Slurm's queue (an allocation gone from it has ended; its join token is revoked).

sbatch runs on the control plane's host, synchronously in the request (it answers in
well under a second); the host needs a Slurm client for the cluster (docs/slurm.md).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from controlplane.errors import ApiError, Conflict, InvalidInput, NotFound
from controlplane.jobs.services import nodes as node_services
from controlplane.slurm import sbatch
from controlplane.slurm.models import Allocation

log = logging.getLogger(__name__)

# An allocation's join token lasts this long: time enough to wait in Slurm's queue.
TOKEN_EXPIRY = timedelta(days=7)


class SlurmDisabled(Conflict):
    code = "slurm_disabled"


class SlurmRefused(ApiError):
    code = "slurm_refused"
    status_code = 502


def _require_enabled() -> None:
    if not settings.SLURM_ENABLED:
        raise SlurmDisabled(
            "Slurm is not enabled on this control plane: set SLURM_ENABLED=true on a host "
            "with a Slurm client (sbatch, squeue, scancel) for the cluster (docs/slurm.md)."
        )


def allocation_create(*, request: sbatch.Request, server: str, created_by=None) -> Allocation:
    """Submit a batch job of ``request.nodes`` nodes, each running an agent that enrols
    with a join token minted for this allocation (one enrolment per node)."""
    _require_enabled()
    errors = sbatch.check_request(request)
    if errors:
        raise InvalidInput(" ".join(errors.values()), details=errors)
    with transaction.atomic():
        allocation = Allocation.objects.create(
            nodes=request.nodes,
            partition=request.partition,
            gres=request.gres,
            time_limit=request.time_limit,
            created_by=created_by,
        )
        token, secret = node_services.join_token_create(
            label=f"slurm allocation {allocation.id}",
            created_by=created_by,
            uses=request.nodes,
            expires_in=TOKEN_EXPIRY,
        )
        Allocation.objects.filter(id=allocation.id).update(join_token=token)
    try:
        env = sbatch.job_environment(
            request,
            server=server,
            join_token=secret,
            allocation_id=allocation.id,
            agent_env=settings.SLURM_AGENT_ENV,
        )
        stdout = sbatch.run(
            sbatch.sbatch_argv(
                request,
                bin_dir=settings.SLURM_BIN_DIR,
                output=settings.SLURM_OUTPUT,
                allocation_id=allocation.id,
            ),
            stdin=sbatch.batch_script(agent_python=settings.SLURM_AGENT_PYTHON),
            env=env,
        )
        job_id = sbatch.parse_job_id(stdout)
    except (sbatch.SlurmCommandFailed, ValueError) as exc:
        Allocation.objects.filter(id=allocation.id).update(
            status=Allocation.Status.FAILED, status_reason=str(exc), ended_at=timezone.now()
        )
        node_services.join_token_revoke(token_id=token.id)
        raise SlurmRefused(
            f"Slurm did not take allocation {allocation.id}: {exc}",
            details={"allocation": allocation.id},
        ) from None
    Allocation.objects.filter(id=allocation.id, status=Allocation.Status.SUBMITTING).update(
        status=Allocation.Status.PENDING, slurm_job_id=job_id
    )
    log.info(
        "allocation %s submitted as Slurm job %s (%d node(s))", allocation.id, job_id, request.nodes
    )
    allocation.refresh_from_db()
    return allocation


def allocation_release(*, allocation_id: int) -> Allocation:
    """Cancel the allocation's batch job (scancel). Slurm sends its agents SIGTERM; each
    has the control plane shrink its jobs' workers away, then goes offline."""
    _require_enabled()
    allocation = Allocation.objects.filter(id=allocation_id).first()
    if allocation is None:
        raise NotFound(f"Slurm allocation {allocation_id} does not exist.")
    if allocation.status not in Allocation.ACTIVE:
        raise Conflict(f"Slurm allocation {allocation_id} is {allocation.status} already.")
    if not allocation.slurm_job_id:
        raise Conflict(f"Slurm allocation {allocation_id} has no Slurm job yet; try again.")
    try:
        sbatch.run(sbatch.scancel_argv(allocation.slurm_job_id, bin_dir=settings.SLURM_BIN_DIR))
    except sbatch.SlurmCommandFailed as exc:
        raise SlurmRefused(f"Could not cancel Slurm job {allocation.slurm_job_id}: {exc}") from None
    Allocation.objects.filter(id=allocation.id, status__in=Allocation.ACTIVE).update(
        status=Allocation.Status.ENDING, status_reason="released (scancel)"
    )
    allocation.refresh_from_db()
    return allocation


def allocations_sync() -> list[int]:
    """Follow Slurm's queue: each active allocation takes the status of its batch job; one
    gone from the queue has ended (its join token is revoked). Returns those that ended."""
    if not settings.SLURM_ENABLED:
        return []
    active = list(Allocation.objects.filter(status__in=Allocation.ACTIVE).exclude(slurm_job_id=""))
    if not active:
        return []
    queue = sbatch.parse_queue(sbatch.run(sbatch.squeue_argv(bin_dir=settings.SLURM_BIN_DIR)))
    ended = []
    for allocation in active:
        state = queue.get(allocation.slurm_job_id)
        if state is None:
            updated = Allocation.objects.filter(
                id=allocation.id, status__in=Allocation.ACTIVE
            ).update(status=Allocation.Status.ENDED, ended_at=timezone.now())
            if updated:
                ended.append(allocation.id)
                if allocation.join_token_id:
                    node_services.join_token_revoke(token_id=allocation.join_token_id)
        elif state != allocation.status and not (
            allocation.status == Allocation.Status.ENDING and state != "ending"
        ):
            Allocation.objects.filter(id=allocation.id, status=allocation.status).update(
                status=state
            )
    return ended
