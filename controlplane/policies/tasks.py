"""Celery tasks that evaluate adaptation policies on running jobs."""

import logging

from celery import shared_task
from django.conf import settings

from controlplane.jobs.models import Job
from controlplane.policies import provisioning, services

log = logging.getLogger(__name__)


@shared_task(name="policies.evaluate_job", acks_late=True, time_limit=30)
def evaluate_job(job_id: int) -> None:
    decisions = services.job_policy_evaluate(job_id=job_id)
    for decision in decisions:
        log.info("job %s: rule %s decided %s", job_id, decision.rule, decision.action)


@shared_task(name="policies.evaluate_running_jobs", acks_late=True, time_limit=60)
def evaluate_running_jobs() -> None:
    job_ids = Job.objects.filter(
        status=Job.Status.RUNNING, policy__isnull=False, policy__enabled=True
    ).values_list("id", flat=True)
    for job_id in job_ids:
        services.job_policy_evaluate(job_id=job_id)


@shared_task(name="policies.allocate_cluster", acks_late=True, time_limit=120)
def allocate_cluster() -> None:
    """Goodput-driven provisioning (provisioning.cluster_allocate), when it is switched on."""
    interval = settings.GOODPUT_ALLOCATOR_INTERVAL_S
    if interval <= 0:
        return
    for move in provisioning.cluster_allocate(
        interval_s=interval, restart_s=settings.GOODPUT_RESTART_S
    ):
        log.info("goodput allocation: %s", move)
