"""Fixtures shared by the control-plane tests: enrolled nodes, and an agent's REST client
with a job placed on its node."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from agent.protocol.vocabulary import CODE_KINDS
from controlplane.jobs.models import Job, Node
from controlplane.jobs.services.jobs import job_create
from controlplane.jobs.services.nodes import join_token_create, node_enrol
from controlplane.jobs.services.scheduling import job_place


@pytest.fixture
def nodes():
    """Two enrolled nodes of two slots, running every kind of code (AGENT_CODE's default)."""
    _, token = join_token_create(label="test", uses=2)
    return [
        node_enrol(
            join_token=token,
            name=f"n{i}",
            address=f"10.0.0.{i}",
            slots=2,
            labels={},
            code=list(CODE_KINDS),
        )[0]
        for i in (1, 2)
    ]


@pytest.fixture
def join_token():
    return join_token_create(label="test")[1]


@pytest.fixture
def node_client(join_token):
    """An agent's REST client: node n1 (4 slots) enrolled over the API, with its credential."""
    anon = APIClient()
    reply = anon.post(
        "/api/v1/agent/enrol/",
        {
            "join_token": join_token,
            "name": "n1",
            "address": "127.0.0.1",
            "slots": 4,
            "code": list(CODE_KINDS),  # what an agent runs by default (AGENT_CODE)
        },
        format="json",
    )
    assert reply.status_code == 201, reply.json()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {reply.json()['credential']}")
    client.node = Node.objects.get(name="n1")
    return client


@pytest.fixture
def placed_job(node_client, user):
    """A two-worker job placed on ``node_client``'s node (its start command not applied)."""
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
    )
    assert job_place(job_id=job.id)
    return Job.objects.get(id=job.id)
