"""What users and the agents of a job do, played directly against the services: for the
control-plane tests that need a placed, running or failed job without real agents."""

from agent.protocol.control import WorkerFrame
from controlplane.jobs.models import Command, Job, Node, Worker
from controlplane.jobs.services.commands import command_finish
from controlplane.jobs.services.jobs import job_create
from controlplane.jobs.services.membership import workers_register
from controlplane.jobs.services.reports import job_report, job_worker_report
from controlplane.jobs.services.scheduling import job_place


def new_job(user, *, initial=2, low=None, high=None, **hyper) -> Job:
    """A job of ``user`` with ``initial`` workers (elastic from ``low`` to ``high``)."""
    return job_create(
        owner=user,
        name="runs",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 32, "lr": 0.1, **hyper},
        workers_initial=initial,
        workers_min=low or initial,
        workers_max=high or initial,
        strategy="ssgd",
        topology="ring",
    )


def start(job: Job) -> Job:
    """Place the job and play its agents: ports registered, start applied, running."""
    assert job_place(job_id=job.id)
    return run_placed(job)


def fail(job: Job, reason="worker 0 exited with code 1") -> Job:
    """An agent of the job's current run reports it failed."""
    node = Worker.objects.filter(run_id=job.current_run_id).first().node
    job_report(node=node, job_id=job.id, status="failed", reason=reason)
    return Job.objects.get(id=job.id)


def run_placed(job: Job) -> Job:
    """Take a placed job's current run to running: every node registers its workers'
    ports, applies its start commands and reports the job running."""
    job.refresh_from_db()
    by_node: dict[Node, list[int]] = {}
    for w in Worker.objects.filter(run_id=job.current_run_id).select_related("node"):
        by_node.setdefault(w.node, []).append(w.rank)
    for node, ranks in by_node.items():
        workers_register(
            node=node, job_id=job.id, workers=[{"rank": r, "port": 7000 + r} for r in ranks]
        )
    for command in Command.objects.filter(run_id=job.current_run_id, type="start"):
        command_finish(node=command.node, command_id=command.id, ok=True, step=0)
    for node, ranks in by_node.items():
        job_report(
            node=node,
            job_id=job.id,
            status="running",
            workers=[{"rank": r, "port": 7000 + r} for r in ranks],
        )
    return Job.objects.get(id=job.id)


def worker_report(job: Job, rank: int, event: str, **data) -> None:
    """The agent forwarding worker ``rank``'s ``event`` (joined, rescaled, …): the ``worker``
    frame read by the protocol's parser, as the consumer reads it. Fields a test leaves out
    get what the real worker would have sent (its address, rank 0 of 1, no pause)."""
    w = Worker.objects.select_related("node").get(job=job, rank=rank)
    sent_anyway = {
        "standby": {"address": w.address or f"{w.node.address}:0"},
        "rescaled": {"cluster_rank": 0, "size": 1, "paused_s": 0.0},
        "exited": {"code": None, "error": ""},
    }.get(event, {})
    frame = WorkerFrame.from_dict(
        {"type": "worker", "job": job.id, "rank": rank, "event": event, **sent_anyway, **data}
    )
    job_worker_report(node=w.node, job_id=job.id, rank=rank, event=frame.event)
