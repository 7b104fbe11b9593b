"""Agents say their package version and protocol at enrolment and with every heartbeat;
the control plane keeps them on the node and refuses a protocol it does not speak: the
node becomes ``incompatible`` with a reason that says what to upgrade, placement skips
it, and its jobs go on without it once its heartbeats are late."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.jobs.models import JoinToken, Node, Worker
from controlplane.jobs.services import nodes as node_services
from controlplane.jobs.services.nodes import join_token_create, nodes_mark_lost
from controlplane.jobs.services.scheduling import job_place
from tests.controlplane.jobs.agent_steps import new_job, start
from tests.controlplane.jobs.conftest import as_node, enrol

pytestmark = pytest.mark.django_db


def test_the_node_keeps_the_version_and_protocol_its_agent_says(api):
    _, secret = join_token_create()
    credential = enrol(secret, "n1", agent_version="0.1.0", protocol=1).json()["credential"]
    (node,) = api.get("/api/v1/nodes/").json()
    assert (node["agent_version"], node["protocol"]) == ("0.1.0", 1)
    beat = as_node(credential).post(
        "/api/v1/agent/heartbeat/", {"agent_version": "0.1.1", "protocol": 1}, format="json"
    )
    assert beat.status_code == 200
    (node,) = api.get("/api/v1/nodes/").json()
    assert (node["agent_version"], node["protocol"], node["status"]) == ("0.1.1", 1, "online")


def test_an_agent_from_before_versions_speaks_protocol_1():
    _, secret = join_token_create()
    assert enrol(secret, "n1").status_code == 201
    assert Node.objects.get(name="n1").protocol is None


def test_an_agent_newer_than_the_control_plane_is_told_to_upgrade_the_control_plane_first():
    token, secret = join_token_create()
    refused = enrol(secret, "n1", agent_version="9.0.0", protocol=2)
    assert refused.status_code == 400
    body = refused.json()
    assert body["code"] == "incompatible_protocol"
    assert "upgrade the control plane first" in body["message"]
    assert body["details"] == {"protocol": 2, "supported": [1, 1]}
    assert not Node.objects.exists() and JoinToken.objects.get(id=token.id).uses_left == 1


def test_an_agent_too_old_for_the_control_plane_is_told_to_upgrade(monkeypatch):
    # A control plane that no longer speaks protocol 1.
    monkeypatch.setattr(node_services, "PROTOCOL_OLDEST", 2)
    monkeypatch.setattr(node_services, "PROTOCOL_NEWEST", 3)
    _, secret = join_token_create()
    refused = enrol(secret, "n1", protocol=1)
    assert refused.status_code == 400
    assert "upgrade the agent to a version speaking protocol 3" in refused.json()["message"]


def test_a_heartbeat_in_a_protocol_not_spoken_makes_the_node_incompatible(user):
    _, secret = join_token_create()
    credential = enrol(secret, "n1", protocol=1).json()["credential"]
    node = as_node(credential)
    refused = node.post(
        "/api/v1/agent/heartbeat/", {"agent_version": "9.0.0", "protocol": 2}, format="json"
    )
    assert refused.status_code == 400 and refused.json()["code"] == "incompatible_protocol"
    row = Node.objects.get(name="n1")
    assert row.status == "incompatible" and row.agent_version == "9.0.0"
    assert "upgrade the control plane first" in row.status_reason
    job = new_job(user, initial=1)
    assert not job_place(job_id=job.id)  # placement skips it

    # The right agent is back: the node is online again.
    assert node.post("/api/v1/agent/heartbeat/", {"protocol": 1}, format="json").status_code == 200
    row.refresh_from_db()
    assert (row.status, row.status_reason) == ("online", "")
    assert job_place(job_id=job.id)


def test_the_jobs_of_an_incompatible_node_go_on_without_it_once_it_is_silent(user):
    _, secret = join_token_create()
    credential = enrol(secret, "n1", protocol=1).json()["credential"]
    job = start(new_job(user, initial=1))
    as_node(credential).post("/api/v1/agent/heartbeat/", {"protocol": 2}, format="json")
    assert nodes_mark_lost(timeout_s=30) == []  # not silent yet
    Node.objects.filter(name="n1").update(last_heartbeat=timezone.now() - timedelta(minutes=5))
    assert nodes_mark_lost(timeout_s=30) == [Node.objects.get(name="n1").id]
    job.refresh_from_db()
    assert job.status == "failed" and "node n1 is incompatible" in job.status_reason
    assert not Worker.objects.filter(job=job, state__in=Worker.ACTIVE).exists()
    assert Node.objects.get(name="n1").status == "incompatible"  # still says what to do
    assert nodes_mark_lost(timeout_s=30) == []  # nothing left to do there


def test_a_malformed_protocol_is_a_400():
    _, secret = join_token_create()
    response = enrol(secret, "n1", protocol="one")
    assert response.status_code == 400 and response.json()["message"].startswith("protocol:")
