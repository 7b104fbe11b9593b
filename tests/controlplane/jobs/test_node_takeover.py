"""Issue #18's trust-boundary attacks, refused: one join token enrolled two nodes, and
enrolling under an enrolled node's name replaced that node (its credential got 401 and
the impostor received the next ``start`` of a job placed there). Now a token enrols at
most its uses, and a taken name is a 409 that names the node and what an admin does —
with nothing used up or changed by the refusal."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from controlplane.jobs.models import Command, JoinToken, Node
from controlplane.jobs.services.nodes import join_token_create
from controlplane.jobs.services.scheduling import job_place
from tests.controlplane.jobs.agent_steps import new_job
from tests.controlplane.jobs.conftest import as_node, enrol

pytestmark = pytest.mark.django_db


def test_one_join_token_does_not_enrol_two_nodes():
    _, secret = join_token_create()
    first = enrol(secret, "n1")
    assert first.status_code == 201
    second = enrol(secret, "n2")
    assert second.status_code == 401 and second.json()["code"] == "join_token_used_up"
    assert list(Node.objects.values_list("name", flat=True)) == ["n1"]


def test_enrolling_under_an_enrolled_nodes_name_is_refused_and_changes_nothing(user):
    _, secret = join_token_create()
    original = enrol(secret, "n1").json()["credential"]
    node = Node.objects.get(name="n1")

    # The impostor holds a valid token of its own.
    impostor_token, impostor_secret = join_token_create()
    refused = enrol(impostor_secret, "n1", address="203.0.113.66")
    assert refused.status_code == 409
    body = refused.json()
    assert body["code"] == "node_name_taken"
    assert body["details"] == {"node": node.id, "name": "n1", "status": "online"}
    message = body["message"]
    assert "'n1' is enrolled already" in message
    assert "revokes or deletes node 'n1' first" in message
    assert f"/api/v1/nodes/{node.id}/revoke/" in message and "credential file" in message

    # Nothing lost: the node, its credential and the impostor's token are as they were.
    assert Node.objects.get(id=node.id).credential_hash == node.credential_hash
    assert Node.objects.get(id=node.id).address == "10.0.0.9"
    assert JoinToken.objects.get(id=impostor_token.id).uses_left == 1
    assert as_node(original).post("/api/v1/agent/heartbeat/", {}, format="json").status_code == 200
    # The next start of a job placed there goes to the original node, the only n1.
    job = new_job(user, initial=1)
    assert job_place(job_id=job.id)
    start = Command.objects.get(job=job, type="start")
    assert start.node_id == node.id and Node.objects.filter(name="n1").count() == 1


def test_an_admin_revokes_or_deletes_a_node_before_its_name_enrols_again(staff_api):
    _, secret = join_token_create(uses=4)
    old = enrol(secret, "n1").json()
    assert staff_api.post(f"/api/v1/nodes/{old['node']}/revoke/").status_code == 200

    replaced = enrol(secret, "n1")
    assert replaced.status_code == 201, replaced.json()
    new = replaced.json()
    assert new["node"] != old["node"]
    # The revoked node is deleted (its row kept for the history) and stays refused.
    assert Node.objects.get(id=old["node"]).deleted_at is not None
    stale = as_node(old["credential"]).post("/api/v1/agent/heartbeat/", {}, format="json")
    assert stale.status_code == 401 and stale.json()["code"] == "node_revoked"
    assert [n["id"] for n in staff_api.get("/api/v1/nodes/").json()] == [new["node"]]

    assert staff_api.delete(f"/api/v1/nodes/{new['node']}/").status_code == 204
    again = enrol(secret, "n1")
    assert again.status_code == 201, again.json()
    gone = as_node(new["credential"]).post("/api/v1/agent/heartbeat/", {}, format="json")
    assert gone.status_code == 401 and gone.json()["code"] == "node_unknown"


@pytest.mark.django_db(transaction=True)
def test_two_agents_racing_for_one_name_enrol_one_node():
    _, secret = join_token_create(uses=4)
    start = threading.Barrier(4)
    answers: list[tuple[int, str]] = []

    def agent() -> None:
        try:
            start.wait()
            response = enrol(secret, "contested")
            answers.append((response.status_code, response.json().get("code", "")))
        finally:
            connection.close()

    threads = [threading.Thread(target=agent) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [(201, "")] + [(409, "node_name_taken")] * 3
    assert Node.objects.filter(name="contested").count() == 1
    assert JoinToken.objects.get().uses_left == 3  # refused enrolments use nothing
