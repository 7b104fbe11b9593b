"""What the agents of a placed job do, played directly against the services: for the
control-plane tests that need a running job without real agents."""

from controlplane.jobs import services
from controlplane.jobs.models import Command, Job, Node, Worker


def run_placed(job: Job) -> Job:
    """Take a placed job's current run to running: every node registers its workers'
    ports, applies its start commands and reports the job running."""
    job.refresh_from_db()
    by_node: dict[Node, list[int]] = {}
    for w in Worker.objects.filter(run_id=job.current_run_id).select_related("node"):
        by_node.setdefault(w.node, []).append(w.rank)
    for node, ranks in by_node.items():
        services.workers_register(
            node=node, job_id=job.id, workers=[{"rank": r, "port": 7000 + r} for r in ranks]
        )
    for command in Command.objects.filter(run_id=job.current_run_id, type="start"):
        services.command_finish(node=command.node, command_id=command.id, ok=True, step=0)
    for node, ranks in by_node.items():
        services.job_report(
            node=node,
            job_id=job.id,
            status="running",
            workers=[{"rank": r, "port": 7000 + r} for r in ranks],
        )
    return Job.objects.get(id=job.id)


def worker_report(job: Job, rank: int, event: str, **data) -> None:
    """The agent forwarding worker ``rank``'s ``event`` (joined, rescaled, …)."""
    w = Worker.objects.select_related("node").get(job=job, rank=rank)
    services.job_worker_report(node=w.node, job_id=job.id, rank=rank, event=event, data=data)
