"""Agent endpoints: enrolment, credentials, placement on the enrolled node, heartbeats."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.jobs.models import Job, Node, Worker
from controlplane.jobs.services.commands import command_finish
from controlplane.jobs.services.jobs import job_create
from controlplane.jobs.services.nodes import nodes_mark_lost
from controlplane.jobs.services.scheduling import job_place

pytestmark = pytest.mark.django_db


def test_enrolment_stores_only_a_digest_of_the_credential(node_client):
    node = node_client.node
    assert node.status == "online"
    assert len(node.credential_hash) == 64
    assert node_client._credentials["HTTP_AUTHORIZATION"].split()[1] != node.credential_hash


def test_bad_join_token_is_refused():
    response = APIClient().post(
        "/api/v1/agent/enrol/",
        {"join_token": "nope", "name": "x", "address": "h", "slots": 1},
        format="json",
    )
    assert response.status_code == 401
    assert "join token" in response.json()["message"]


def test_unknown_node_credential_is_refused():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Node not-a-credential")
    assert client.post("/api/v1/agent/heartbeat/", {}, format="json").status_code == 401


def test_user_token_cannot_call_agent_endpoints(api):
    response = api.post("/api/v1/agent/heartbeat/", {}, format="json")
    assert response.status_code == 401
    assert "Node" in response.headers["WWW-Authenticate"]


def test_placement_puts_workers_on_a_node_with_free_slots(placed_job):
    assert placed_job.status == "scheduling"
    assert Worker.objects.filter(job=placed_job).count() == 2
    start = placed_job.commands.get(type="start")
    assert start.payload["world_size"] == 2 and start.state == "pending"


def test_job_that_does_not_fit_stays_pending(node_client, user):
    job = job_create(
        owner=user,
        name="big",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 32, "lr": 0.1},
        workers_initial=8,
        workers_min=8,
        workers_max=8,
        strategy="ssgd",
        topology="ring",
    )
    assert not job_place(job_id=job.id)
    assert Job.objects.get(id=job.id).status == "pending"


def test_heartbeat_without_a_started_job_fails_it_as_lost_by_a_restarted_agent(
    node_client, placed_job
):
    # Start not yet applied: the agent may simply not have started it yet.
    assert (
        node_client.post("/api/v1/agent/heartbeat/", {"jobs": []}, format="json").status_code == 200
    )
    assert Job.objects.get(id=placed_job.id).status == "scheduling"
    start = placed_job.commands.get(type="start")
    command_finish(node=node_client.node, command_id=start.id, ok=True, step=0)
    node_client.post("/api/v1/agent/heartbeat/", {"jobs": [placed_job.id]}, format="json")
    assert Job.objects.get(id=placed_job.id).status == "scheduling"
    node_client.post("/api/v1/agent/heartbeat/", {"jobs": []}, format="json")
    job = Job.objects.get(id=placed_job.id)
    assert job.status == "failed" and "restarted" in job.status_reason
    assert set(job.workers.values_list("state", flat=True)) == {"failed"}


def test_heartbeat_with_malformed_job_list_is_a_400(node_client):
    response = node_client.post("/api/v1/agent/heartbeat/", {"jobs": ["x"]}, format="json")
    assert response.status_code == 400


def test_goodbye_takes_the_node_offline_at_once_and_a_heartbeat_brings_it_back(node_client):
    reply = node_client.post(
        "/api/v1/agent/goodbye/", {"reason": "the agent stopped (no workers)"}, format="json"
    )
    assert reply.status_code == 200
    node = Node.objects.get(id=node_client.node.id)
    assert (node.status, node.status_reason) == ("offline", "the agent stopped (no workers)")
    # Offline and silent for ever, with no workers: never found lost.
    Node.objects.filter(id=node.id).update(last_heartbeat=timezone.now() - timedelta(hours=1))
    assert nodes_mark_lost(timeout_s=30) == []
    node_client.post("/api/v1/agent/heartbeat/", {"jobs": []}, format="json")
    assert Node.objects.get(id=node.id).status == "online"


def test_workers_left_running_by_a_goodbye_are_lost_if_no_agent_comes_back(node_client, placed_job):
    start = placed_job.commands.get(type="start")
    command_finish(node=node_client.node, command_id=start.id, ok=True, step=0)
    node_client.post(
        "/api/v1/agent/goodbye/",
        {"reason": "the agent stopped (workers left running)", "detached": [placed_job.id]},
        format="json",
    )
    assert Node.objects.get(id=node_client.node.id).status == "offline"
    assert nodes_mark_lost(timeout_s=30) == []  # within the timeout: the next agent may come
    Node.objects.filter(id=node_client.node.id).update(
        last_heartbeat=timezone.now() - timedelta(seconds=31)
    )
    assert nodes_mark_lost(timeout_s=30) == [node_client.node.id]
    job = Job.objects.get(id=placed_job.id)
    assert job.status == "failed" and "lost" in job.status_reason
