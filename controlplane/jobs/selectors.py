"""Read-only queries over jobs and nodes, scoped to what a user may see."""

from django.db.models import QuerySet

from controlplane.errors import NotFound
from controlplane.jobs.models import ClusterVersion, Command, Event, Job, Node, Run


def jobs_visible_to(user) -> QuerySet[Job]:
    qs = Job.objects.select_related("owner", "policy", "current_run").prefetch_related(
        "workers__node"
    )
    return qs if user.is_staff else qs.filter(owner=user)


def job_get_for_user(*, user, job_id: int) -> Job:
    job = jobs_visible_to(user).filter(id=job_id).first()
    if job is None:
        # Someone else's job answers exactly like a missing one: ids leak nothing.
        raise NotFound(f"Job {job_id} does not exist or is not yours.")
    return job


def job_commands(job: Job) -> QuerySet[Command]:
    return Command.objects.filter(job=job).select_related("node").order_by("seq", "id")


def job_runs(job: Job) -> QuerySet[Run]:
    """The job's runs, newest first."""
    return Run.objects.filter(job=job).order_by("-number")


def job_run_get(job: Job, number: int | None) -> Run | None:
    """Run ``number`` of the job (1-based), or its current run when ``number`` is None
    (None: the job has not been placed yet). An unknown number is a 404 that lists the
    runs there are."""
    if number is None:
        return job.current_run
    run = Run.objects.filter(job=job, number=number).first()
    if run is None:
        numbers = list(
            Run.objects.filter(job=job).order_by("number").values_list("number", flat=True)
        )
        there = (
            f"its runs are {', '.join(str(n) for n in numbers)}"
            if numbers
            else "it has no runs yet (it has not been placed)"
        )
        raise NotFound(
            f"Job {job.id} has no run {number}; {there}.", details={"run": number, "runs": numbers}
        )
    return run


def job_events(job: Job, *, after_id: int | None = None, run: Run | None = None) -> QuerySet[Event]:
    """The job's events, oldest first; only run ``run``'s when given."""
    qs = Event.objects.filter(job=job).select_related("run").order_by("id")
    if run is not None:
        qs = qs.filter(run=run)
    return qs.filter(id__gt=after_id) if after_id else qs


def nodes_all() -> QuerySet[Node]:
    return Node.objects.order_by("name")


def job_cluster_members(job: Job) -> list[int]:
    """Worker numbers of the latest cluster version of the job's current run, in rank order."""
    if not job.cluster_version:
        return []
    row = ClusterVersion.objects.filter(
        run_id=job.current_run_id, version=job.cluster_version
    ).values_list("workers", flat=True)
    return list(row.first() or [])


def job_cluster_versions(job: Job) -> QuerySet[ClusterVersion]:
    """The cluster versions of the job's current run."""
    return ClusterVersion.objects.filter(run_id=job.current_run_id).order_by("version")
