"""Jobs: jobs and their runs (attempts), the nodes (agents) that run them, their workers,
cluster versions, commands and audit events.

Modules, bottom to top; each imports only modules below it, never above:

1. ``models`` — the tables, with their status choices;
2. ``placement`` — where workers go (pure: no ORM);
3. ``selectors`` — reads, returning querysets with what their callers need loaded;
4. ``lifecycle`` — the one place a job's status changes (mirrored onto its current run),
   with the audit event and the live push of every change (through ``live.channels``);
5. ``outbox`` — commands as durable rows and the frames pushed to agents (``command``,
   ``cluster``), with the one start payload a job's start and a grow's joiners share;
6. ``services/`` — the writes, one module per noun: ``membership`` (cluster versions and
   what a change of members does), then ``elastic`` (scale_workers, joiners given up
   on, grows back), ``scheduling``, ``jobs``, ``commands``, ``reports`` and ``nodes``.
   Services queue Celery tasks by name (``controlplane.celery.enqueue``);
7. entry points: ``tasks`` (the only importer of services from Celery), ``apis/``,
   ``auth`` and the management commands; ``live.consumers`` calls the services too.

A job executes as runs: workers, cluster versions and commands belong to the job's
current run, and what agents report about a run that is no longer current (a straggler
of a restarted job) only updates that run's workers, never the job.
"""
