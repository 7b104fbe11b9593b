"""Celery tasks of the logs app: retention (``logs.apply_retention``, run by the beat)."""

import logging

from celery import shared_task
from django.conf import settings

from controlplane.logs import services

log = logging.getLogger(__name__)


@shared_task(name="logs.apply_retention", acks_late=True, time_limit=600)
def apply_retention() -> None:
    services.log_batches_forget()
    if settings.LOG_RETENTION_DAYS <= 0:
        return
    deleted = services.logs_apply_retention(days=settings.LOG_RETENTION_DAYS)
    if deleted:
        log.info(
            "retention: deleted %d log lines of jobs ended over %g days ago",
            deleted,
            settings.LOG_RETENTION_DAYS,
        )
