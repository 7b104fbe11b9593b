"""Logs: what training workers print, stored per run of a job and worker, and read back
on the job page, over REST and by ``adaptrain logs``.

Agents post each job's new lines in batches (``POST /api/v1/agent/logs/``); ingest
checks the whole batch, numbers its lines within their run (``seq`` 1, 2, …, in the
order the node saw them), stores them in bulk (COPY) once per batch id, keeps each run
under ``LOG_MAX_BYTES_PER_RUN`` by removing its oldest lines, and pushes the new lines
to the job's browsers as a ``log`` frame (``live.channels``). A Celery beat task removes
the lines of jobs that ended more than ``LOG_RETENTION_DAYS`` ago. The app sits above
``jobs`` (runs, nodes, workers) and below ``live``'s consumers.
"""
