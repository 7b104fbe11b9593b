"""Beat sweep: follow Slurm's queue, then provision through it when SLURM_AUTOSCALE is on
(slurm.sync_allocations)."""

from __future__ import annotations

import logging

from celery import shared_task

from controlplane.slurm import autoscale, sbatch, services

log = logging.getLogger(__name__)


@shared_task(name="slurm.sync_allocations", acks_late=True, time_limit=60)
def sync_allocations() -> None:
    try:
        ended = services.allocations_sync()
    except sbatch.SlurmCommandFailed as exc:
        log.warning("could not read Slurm's queue: %s", exc)
        return
    if ended:
        log.info("Slurm allocation(s) %s ended", ended)
    try:
        autoscale.autoscale()
    except sbatch.SlurmCommandFailed as exc:
        log.warning("Slurm autoscaling failed: %s", exc)
