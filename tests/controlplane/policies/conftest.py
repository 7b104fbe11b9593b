"""Fixtures for policy tests: an enrolled node and a running job with a policy."""

import pytest

from controlplane.jobs import services
from controlplane.jobs.models import Command, Job
from controlplane.policies.services import policy_create

RULE = {
    "name": "grow",
    "when": "steps_since_fired >= 100",
    "action": {"type": "set_batch_size", "value": "batch_size * 2"},
    "bounds": {"max": 128},
}


@pytest.fixture
def node():
    token = services.join_token_create()
    node, _ = services.node_enrol(
        join_token=token, name="n1", address="127.0.0.1", slots=4, labels={}
    )
    return node


def running_job(user, node, *, dry_run=False):
    policy = policy_create(
        owner=user, definition={"name": "p", "dry_run": dry_run, "rules": [RULE]}
    )
    job = services.job_create(
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
    services.job_place(job_id=job.id)
    start = Command.objects.get(job=job, type="start")
    services.command_finish(node=node, command_id=start.id, ok=True, step=0)
    services.job_report(
        node=node,
        job_id=job.id,
        status="running",
        workers=[{"rank": 0, "port": 1}, {"rank": 1, "port": 2}],
    )
    Job.objects.filter(id=job.id).update(last_step=150)
    return Job.objects.get(id=job.id)
