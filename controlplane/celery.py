"""The Celery app: policy evaluation, job placement and node liveness run here.

Training itself is never a Celery task; agents run it.
"""

import logging
import os

from celery import Celery
from kombu.exceptions import OperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["controlplane.jobs", "controlplane.policies", "controlplane.live"])

log = logging.getLogger(__name__)


def enqueue(task, *args, **options) -> bool:
    """Queue ``task(*args)``; False (logged) when the broker cannot be reached, instead of
    an error in the request or ingest that asked, whose rows are committed by then. Only
    for work a beat sweep also does (placement: jobs.place_pending_jobs; policy
    evaluation: policies.evaluate_running_jobs), so it is late, never lost."""
    try:
        task.apply_async(args, **options)
    except (OperationalError, OSError) as exc:
        log.warning(
            "could not queue %s%s (broker unavailable: %s); the beat sweep does it later",
            task.name,
            args,
            exc,
        )
        return False
    return True
