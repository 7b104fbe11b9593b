"""The control plane: a Django project (REST + WebSocket over ASGI) and its Celery app.

Importing the package loads the Celery app so that ``@shared_task`` functions bind to it.
"""

from controlplane.celery import app as celery_app

__all__ = ["celery_app"]
