"""Beat sweep: follow Slurm's queue (slurm.sync_allocations)."""

from __future__ import annotations

import logging

from celery import shared_task

from controlplane.slurm import sbatch, services

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
