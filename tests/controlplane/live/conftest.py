"""Fixtures shared by the live tests that talk to the agent side."""

import pytest

from controlplane.jobs.models import Job, Node
from controlplane.jobs.services.jobs import job_create
from controlplane.jobs.services.nodes import join_token_create, node_enrol
from controlplane.jobs.services.scheduling import job_place


@pytest.fixture
def node() -> Node:
    """One enrolled node, n1, with 2 slots."""
    node, _ = node_enrol(
        join_token=join_token_create(label="t")[1],
        name="n1",
        address="127.0.0.1",
        slots=2,
        labels={},
    )
    return Node.objects.get(id=node.id)


@pytest.fixture
def placed_job(node, user) -> Job:
    """A one-worker job placed on ``node`` (its start command issued, not applied)."""
    job = job_create(
        owner=user,
        name="j",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 32, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
    )
    assert job_place(job_id=job.id)
    return job
