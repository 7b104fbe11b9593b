"""The Celery app: policy evaluation, job placement and node liveness run here.

Training itself is never a Celery task; agents run it.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["controlplane.jobs", "controlplane.policies", "controlplane.live"])
