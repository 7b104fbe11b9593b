"""What staff do to a node: drain it (no new placement or grow goes there; its running
jobs carry on) and take it back, revoke it (its credential is refused at once and its
jobs go on without it, as for a lost node) and delete it once no worker runs there."""

from __future__ import annotations

import pytest

from controlplane.jobs.models import ClusterVersion, Job, Node, Worker
from controlplane.jobs.services.nodes import join_token_create
from controlplane.jobs.services.scheduling import job_place
from tests.controlplane.jobs.agent_steps import fail, new_job, start
from tests.controlplane.jobs.conftest import as_node, enrol

pytestmark = pytest.mark.django_db


def _nodes_of(job: Job) -> set[str]:
    return set(
        Worker.objects.filter(job=job, state__in=Worker.ACTIVE).values_list("node__name", flat=True)
    )


@pytest.fixture
def enrolled():
    """Nodes n1, n2, n3 (2 slots each) enrolled over the API: name → credential."""
    _, secret = join_token_create(uses=3)
    return {
        name: enrol(secret, name, address=f"10.0.0.{i}").json()["credential"]
        for i, name in enumerate(("n1", "n2", "n3"), start=1)
    }


def _id(name: str) -> int:
    return Node.objects.enrolled().get(name=name).id


def test_a_drained_node_gets_no_new_workers_until_it_is_resumed(staff_api, user, enrolled):
    drained = staff_api.post(f"/api/v1/nodes/{_id('n1')}/drain/")
    assert drained.status_code == 200 and drained.json()["draining"] is True
    assert drained.json()["status"] == "online"
    staff_api.post(f"/api/v1/nodes/{_id('n2')}/drain/")

    job = new_job(user, initial=2)
    assert job_place(job_id=job.id)
    assert _nodes_of(job) == {"n3"}  # not n1, the best fit were it not draining
    waiting = new_job(user, initial=2)
    assert not job_place(job_id=waiting.id)
    assert Job.objects.get(id=waiting.id).status == "pending"

    resumed = staff_api.post(f"/api/v1/nodes/{_id('n1')}/resume/")
    assert resumed.status_code == 200 and resumed.json()["draining"] is False
    assert job_place(job_id=waiting.id) and _nodes_of(waiting) == {"n1"}


def test_a_drained_nodes_running_job_carries_on_but_does_not_grow_there(staff_api, user, enrolled):
    staff_api.post(f"/api/v1/nodes/{_id('n2')}/drain/")
    staff_api.post(f"/api/v1/nodes/{_id('n3')}/drain/")
    job = start(new_job(user, initial=2, low=1, high=4))
    assert _nodes_of(job) == {"n1"}
    staff_api.post(f"/api/v1/nodes/{_id('n1')}/drain/")
    job.refresh_from_db()
    assert job.status == "running" and _nodes_of(job) == {"n1"}

    grow = staff_api.post(
        f"/api/v1/jobs/{job.id}/commands/", {"action": "scale_workers", "value": 4}, format="json"
    )
    assert grow.status_code == 409, grow.json()
    assert "on online nodes (not draining)" in grow.json()["message"]
    staff_api.post(f"/api/v1/nodes/{_id('n2')}/resume/")
    grow = staff_api.post(
        f"/api/v1/jobs/{job.id}/commands/", {"action": "scale_workers", "value": 4}, format="json"
    )
    assert grow.status_code == 201, grow.json()
    joiners = Worker.objects.filter(job=job, state="joining").values_list("node__name", flat=True)
    assert set(joiners) == {"n2"}


def test_revoking_a_node_refuses_its_credential_and_its_jobs_go_on_without_it(
    staff_api, user, enrolled
):
    elastic = start(new_job(user, initial=4, low=2, high=4))
    assert _nodes_of(elastic) == {"n1", "n2"}
    rigid = start(new_job(user, initial=2))
    assert _nodes_of(rigid) == {"n3"}

    revoked = staff_api.post(f"/api/v1/nodes/{_id('n1')}/revoke/")
    assert revoked.status_code == 200
    node = revoked.json()
    assert node["status"] == "revoked" and node["workers_active"] == 0
    assert "revoked by user:root" in node["status_reason"]
    refused = as_node(enrolled["n1"]).post("/api/v1/agent/heartbeat/", {}, format="json")
    assert refused.status_code == 401 and refused.json()["code"] == "node_revoked"
    assert "revoked by user:root" in refused.json()["message"]
    assert "Node" in refused.headers["WWW-Authenticate"]

    # The elastic job shrinks to n2's workers in a new cluster version.
    elastic.refresh_from_db()
    assert elastic.status == "rescaling" and _nodes_of(elastic) == {"n2"}
    latest = ClusterVersion.objects.get(job=elastic, version=elastic.cluster_version)
    assert len(latest.members) == 2 and "n1 was revoked by user:root" in latest.reason
    # The rigid job fails, saying why.
    staff_api.post(f"/api/v1/nodes/{_id('n3')}/revoke/")
    rigid.refresh_from_db()
    assert rigid.status == "failed"
    assert "node n3 was revoked by user:root" in rigid.status_reason

    # Revoking again changes nothing; a revoked node takes nothing.
    assert staff_api.post(f"/api/v1/nodes/{_id('n1')}/revoke/").status_code == 200
    drain = staff_api.post(f"/api/v1/nodes/{_id('n1')}/drain/")
    assert drain.status_code == 409 and "revoked" in drain.json()["message"]
    job = new_job(user, initial=2)
    assert not job_place(job_id=job.id)  # n2 is full, n1 and n3 are revoked


def test_a_node_running_workers_is_deleted_only_once_they_are_gone(staff_api, user, enrolled):
    job = start(new_job(user, initial=2))
    (name,) = _nodes_of(job)
    node_id = _id(name)
    refused = staff_api.delete(f"/api/v1/nodes/{node_id}/")
    assert refused.status_code == 409
    body = refused.json()
    assert f"runs 2 worker(s) of job {job.id} ('runs')" in body["message"]
    assert "drain it" in body["message"] and body["details"]["jobs"] == [job.id]
    assert Node.objects.get(id=node_id).deleted_at is None

    fail(job)
    assert staff_api.delete(f"/api/v1/nodes/{node_id}/").status_code == 204
    assert name not in [n["name"] for n in staff_api.get("/api/v1/nodes/").json()]
    refused = as_node(enrolled[name]).post("/api/v1/agent/heartbeat/", {}, format="json")
    assert refused.status_code == 401 and refused.json()["code"] == "node_unknown"
    # The job's history keeps the node it ran on.
    detail = staff_api.get(f"/api/v1/jobs/{job.id}/").json()
    assert {w["node"] for w in detail["workers"]} == {name}
    assert staff_api.delete(f"/api/v1/nodes/{node_id}/").status_code == 404


def test_only_staff_drain_revoke_or_delete_nodes(api, enrolled):
    node_id = _id("n1")
    for method, path in [
        ("post", f"/api/v1/nodes/{node_id}/drain/"),
        ("post", f"/api/v1/nodes/{node_id}/resume/"),
        ("post", f"/api/v1/nodes/{node_id}/revoke/"),
        ("delete", f"/api/v1/nodes/{node_id}/"),
    ]:
        response = getattr(api, method)(path)
        assert response.status_code == 403, path
        assert "staff" in response.json()["message"]
    node = Node.objects.get(id=node_id)
    assert node.status == "online" and not node.draining and node.deleted_at is None
    listed = api.get("/api/v1/nodes/").json()  # every user sees the nodes
    assert [n["name"] for n in listed] == ["n1", "n2", "n3"]


def test_a_missing_node_is_a_404(staff_api):
    for method, path in [
        ("post", "/api/v1/nodes/999/drain/"),
        ("post", "/api/v1/nodes/999/revoke/"),
        ("delete", "/api/v1/nodes/999/"),
    ]:
        response = getattr(staff_api, method)(path)
        assert (
            response.status_code == 404 and "Node 999 does not exist" in response.json()["message"]
        )
