"""The Celery app: policy evaluation, job placement and node liveness run here.

Training itself is never a Celery task; agents run it. Services queue tasks by name
(:func:`enqueue`), so only the ``tasks`` modules import services, never the reverse.
"""

import logging
import os
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(
    [
        "controlplane.jobs",
        "controlplane.metrics",
        "controlplane.logs",
        "controlplane.policies",
        "controlplane.slurm",
    ]
)

log = logging.getLogger(__name__)


def enqueue(name: str, *args: Any, celery_app: Celery | None = None, **options: Any) -> bool:
    """Queue the task registered as ``name`` with ``args`` (``options`` as for
    ``send_task``: ``countdown``, …) on ``celery_app`` (default: the control plane's).

    False (logged) when the broker cannot be reached, instead of an error in the request
    or ingest that asked, whose rows are committed by then. Only for work a beat sweep
    also does (placement: jobs.place_pending_jobs; policy evaluation:
    policies.evaluate_running_jobs), so it is late, never lost."""
    try:
        (celery_app or app).send_task(name, args, **options)
    except (OperationalError, OSError) as exc:
        log.warning(
            "could not queue %s%s (broker unavailable: %s); the beat sweep does it later",
            name,
            args,
            exc,
        )
        return False
    return True
