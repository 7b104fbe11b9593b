"""Celery tasks of the metrics app: retention. The task keeps the name it had when metrics
were part of the live app (``live.apply_retention``), which the beat schedule uses."""

import logging

from celery import shared_task
from django.conf import settings

from controlplane.metrics import services

log = logging.getLogger(__name__)


@shared_task(name="live.apply_retention", acks_late=True, time_limit=600)
def apply_retention() -> None:
    if settings.METRICS_RETENTION_DAYS <= 0:
        return
    deleted = services.metrics_apply_retention(days=settings.METRICS_RETENTION_DAYS)
    if deleted:
        log.info(
            "retention: deleted %d metric points of jobs ended over %g days ago",
            deleted,
            settings.METRICS_RETENTION_DAYS,
        )
