"""A running job with a policy, for the policy tests (played directly against the
services, without agents)."""

from controlplane.jobs.models import Command, Job
from controlplane.jobs.services.commands import command_finish
from controlplane.jobs.services.jobs import job_create
from controlplane.jobs.services.reports import job_report
from controlplane.jobs.services.scheduling import job_place
from controlplane.policies.services import policy_create

RULE = {
    "name": "grow",
    "when": "steps_since_fired >= 100",
    "action": {"type": "set_batch_size", "value": "batch_size * 2"},
    "bounds": {"max": 128},
}


def running_job(user, node, *, dry_run=False):
    policy = policy_create(
        owner=user, definition={"name": "p", "dry_run": dry_run, "rules": [RULE]}
    )
    job = job_create(
        owner=user,
        name="j",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 32, "lr": 0.1},
        workers_initial=2,
        workers_min=2,
        workers_max=2,
        strategy="ssgd",
        topology="ring",
        policy=policy,
    )
    job_place(job_id=job.id)
    start = Command.objects.get(job=job, type="start")
    command_finish(node=node, command_id=start.id, ok=True, step=0)
    job_report(
        node=node,
        job_id=job.id,
        status="running",
        workers=[{"rank": 0, "port": 1}, {"rank": 1, "port": 2}],
    )
    Job.objects.filter(id=job.id).update(last_step=150)
    return Job.objects.get(id=job.id)
