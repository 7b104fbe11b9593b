"""An agent that is about to stop for good (AGENT_ON_EXIT=leave: its Slurm allocation
ends) asks the control plane to take its workers away first: the node is drained, an
elastic job shrinks off it in a new cluster version with its workers *alive* (they leave
at a step boundary), and a job that cannot shrink is kept, said in the answer."""

from __future__ import annotations

import pytest

from controlplane.jobs.models import ClusterVersion, Command, Node, Worker
from controlplane.jobs.services.nodes import join_token_create
from tests.controlplane.jobs.agent_steps import new_job, start
from tests.controlplane.jobs.conftest import as_node, enrol

pytestmark = pytest.mark.django_db


@pytest.fixture
def enrolled():
    _, secret = join_token_create(uses=3)
    return {
        name: enrol(secret, name, address=f"10.0.0.{i}").json()["credential"]
        for i, name in enumerate(("n1", "n2", "n3"), start=1)
    }


def test_a_leaving_node_is_drained_and_its_elastic_jobs_shrink_off_it(user, enrolled):
    elastic = start(new_job(user, initial=4, low=2, high=4))
    assert set(Worker.objects.filter(job=elastic).values_list("node__name", flat=True)) == {
        "n1",
        "n2",
    }
    rigid = start(new_job(user, initial=2))
    rigid_node = Worker.objects.filter(job=rigid).first().node.name
    assert rigid_node == "n3"

    r = as_node(enrolled["n1"]).post(
        "/api/v1/agent/leave/", {"reason": "Slurm job 7 ends"}, format="json"
    )
    assert r.status_code == 200 and r.json() == {"ok": True, "kept": []}
    assert Node.objects.get(name="n1").draining is True

    elastic.refresh_from_db()
    assert elastic.status == "rescaling" and elastic.cluster_version == 2
    latest = ClusterVersion.objects.get(job=elastic, version=2)
    assert len(latest.members) == 2 and "node n1 leaves (Slurm job 7 ends)" in latest.reason
    # Leavers are not failed: they leave at a step boundary and report it themselves.
    assert not Worker.objects.filter(job=elastic, state=Worker.State.FAILED).exists()
    scale = Command.objects.filter(job=elastic, type=Command.Type.SCALE_WORKERS)
    assert {c.node.name for c in scale} == {"n1", "n2"} and {c.payload["value"] for c in scale} == {
        2
    }

    # The rigid job cannot shrink: kept, for the agent to stop (it fails as for a lost node).
    r = as_node(enrolled["n3"]).post("/api/v1/agent/leave/", {}, format="json")
    assert r.status_code == 200 and r.json()["kept"] == [rigid.id]
    rigid.refresh_from_db()
    assert rigid.status == "running" and Node.objects.get(name="n3").draining is True
