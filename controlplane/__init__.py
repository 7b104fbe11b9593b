"""The control plane: a Django project (REST + WebSocket over ASGI) and its Celery app.

Apps, each one sub-domain, lowest first (``INSTALLED_APPS`` lists them in this order):

1. ``accounts`` — API tokens, token authentication, the credential helpers;
2. ``jobs`` — jobs, runs, nodes, workers, commands, events (it publishes through
   ``live.channels``, which imports no app);
3. ``metrics`` — ingest, storage, retention, downsampling, series reads, metric APIs;
   ``logs`` — workers' output: ingest, storage per run and worker, retention, reads;
4. ``policies`` — policy definitions, evaluation, decisions, replay, templates;
   ``slurm`` — Slurm allocations of agents (sbatch/squeue/scancel); imports jobs;
5. ``live`` — realtime: group names and publishing (``live.channels``, below every app),
   and the WebSocket consumers and socket auth (entry points, on top).

Import rules (import-linter contracts in pyproject.toml keep them):

* The models, selectors and services of an app import only apps below it, never one
  above: accounts imports no app; jobs imports accounts and ``live.channels``; metrics
  and logs import jobs; policies imports metrics and jobs. ``live.channels`` imports
  no app.
  A lower app that needs a higher one's work queues a Celery task by name (metric
  ingest has the job's policy evaluated by ``policies.evaluate_job``).
* Entry points — each app's ``apis``, ``tasks``, ``auth``, ``prometheus`` and management
  commands, ``live.consumers`` and ``live.auth``, and the project's ``urls``, ``asgi``
  and ``frontend`` views — may import any app's services and selectors. No model,
  selector or service imports an entry point.
* Within an app: apis → services/selectors → models; tasks → services; services queue
  tasks by name (``celery.enqueue``) and never import them.
* No app imports another app's ``apis``: the helpers they share are in ``controlplane.api``.
* The control plane imports nothing from ``agent``.

Importing the package loads the Celery app so that ``@shared_task`` functions bind to it.
"""

from controlplane.celery import app as celery_app

__all__ = ["celery_app"]
