"""Metrics: what training workers report, stored per run of a job and read back as
charts and policy inputs.

Ingest validates an agent's batch, stores it in bulk (COPY), pushes it live to the
job's browsers and has the job's policy evaluated (a Celery task queued by name: the
policies app sits above this one). Also here: retention of old jobs' points,
server-side downsampling (pure), the series selectors the charts, policies and replays
read, the metric APIs and the Prometheus ``/metrics`` view of the control plane itself.
The models keep the tables the ``live`` app created (``live_metricpoint``,
``live_metricbatch``).
"""
