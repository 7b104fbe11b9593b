"""Helpers for tests that store metric points directly: every point belongs to a run."""

from controlplane.jobs.models import Job, Run


def run_of(job: Job) -> Run:
    """The job's current run; for a job never placed, run 1, made current as its first
    placement would make it."""
    job.refresh_from_db(fields=["current_run"])
    if job.current_run_id is None:
        run = Run.objects.create(job=job, number=1, created_by="scheduler", reason="test")
        Job.objects.filter(id=job.id).update(current_run=run)
        job.current_run = run
    return job.current_run
