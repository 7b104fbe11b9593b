"""Lost is a suspicion, not a verdict: a node silent past the heartbeat timeout is only
``unreachable`` — its jobs keep their status and its workers, which outlive their agent,
decide — and lost (its jobs shrink or fail) only past the grace period. An agent back
within the grace reports what its workers did meanwhile, and the job ends with that."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.jobs.models import Job, Node
from controlplane.jobs.services.commands import command_finish
from controlplane.jobs.services.nodes import nodes_mark_lost

pytestmark = pytest.mark.django_db

TIMEOUT_S, GRACE_S = 30, 600


def _running(node_client, job: Job) -> None:
    start = job.commands.get(type="start")
    command_finish(node=node_client.node, command_id=start.id, ok=True, step=0)
    reply = node_client.post(
        f"/api/v1/agent/jobs/{job.id}/report/",
        {"status": "running", "workers": [{"rank": 0, "port": 7000}, {"rank": 1, "port": 7001}]},
        format="json",
    )
    assert reply.status_code == 200, reply.content
    assert Job.objects.get(id=job.id).status == "running"


def _silent_for(node: Node, seconds: float) -> None:
    Node.objects.filter(id=node.id).update(
        last_heartbeat=timezone.now() - timedelta(seconds=seconds)
    )


def test_a_silent_node_is_unreachable_and_its_job_keeps_running_until_the_grace_is_over(
    node_client, placed_job, user
):
    _running(node_client, placed_job)
    node = node_client.node
    _silent_for(node, TIMEOUT_S + 15)
    assert nodes_mark_lost(timeout_s=TIMEOUT_S, grace_s=GRACE_S) == []
    node.refresh_from_db()
    assert node.status == "unreachable" and node.unreachable_since is not None
    job = Job.objects.get(id=placed_job.id)
    assert job.status == "running"
    assert set(job.workers.values_list("state", flat=True)) == {"running"}
    # The job says where it stands: which node is unreachable, since when.
    viewer = APIClient()
    viewer.force_authenticate(user)
    detail = viewer.get(f"/api/v1/jobs/{job.id}/").json()
    assert detail["status"] == "running"
    assert [u["node"] for u in detail["unreachable_nodes"]] == ["n1"] and detail[
        "unreachable_nodes"
    ][0]["since"]
    # Past the grace it is lost, and only then does the job fail.
    _silent_for(node, TIMEOUT_S + GRACE_S + 1)
    assert nodes_mark_lost(timeout_s=TIMEOUT_S, grace_s=GRACE_S) == [node.id]
    node.refresh_from_db()
    assert node.status == "lost" and node.unreachable_since is None
    job = Job.objects.get(id=placed_job.id)
    assert job.status == "failed" and "lost" in job.status_reason
    assert viewer.get(f"/api/v1/jobs/{job.id}/").json()["unreachable_nodes"] == []


def test_an_agent_back_within_the_grace_keeps_its_job_and_the_job_ends_with_what_its_workers_did(
    node_client, placed_job
):
    _running(node_client, placed_job)
    _silent_for(node_client.node, TIMEOUT_S + 60)
    nodes_mark_lost(timeout_s=TIMEOUT_S, grace_s=GRACE_S)
    assert Node.objects.get(id=node_client.node.id).status == "unreachable"
    # The agent is back (restarted, re-attached to its workers by pid): its heartbeat lists
    # the job, which it is not told to release, and the node is online again.
    reply = node_client.post("/api/v1/agent/heartbeat/", {"jobs": [placed_job.id]}, format="json")
    assert reply.status_code == 200 and reply.json()["release"] == []
    node = Node.objects.get(id=node_client.node.id)
    assert (node.status, node.unreachable_since) == ("online", None)
    # Its workers finished training while it was away: the job succeeded.
    reply = node_client.post(
        f"/api/v1/agent/jobs/{placed_job.id}/report/", {"status": "succeeded"}, format="json"
    )
    assert reply.status_code == 200
    assert Job.objects.get(id=placed_job.id).status == "succeeded"


def test_an_outage_of_the_control_plane_itself_does_not_make_a_node_unreachable(
    node_client, placed_job
):
    _running(node_client, placed_job)
    # 45 s since the last heartbeat, 40 of which the database was down.
    _silent_for(node_client.node, 45)
    assert nodes_mark_lost(timeout_s=TIMEOUT_S, grace_s=GRACE_S, blind_s=40) == []
    assert Node.objects.get(id=node_client.node.id).status == "online"


def test_without_a_grace_a_silent_node_is_lost_at_the_timeout(node_client, placed_job):
    _running(node_client, placed_job)
    _silent_for(node_client.node, TIMEOUT_S + 1)
    assert nodes_mark_lost(timeout_s=TIMEOUT_S, grace_s=0) == [node_client.node.id]
    assert Job.objects.get(id=placed_job.id).status == "failed"


def test_an_unreachable_node_takes_no_new_workers(node_client):
    _silent_for(node_client.node, TIMEOUT_S + 1)
    nodes_mark_lost(timeout_s=TIMEOUT_S, grace_s=GRACE_S)
    assert not Node.objects.schedulable().filter(id=node_client.node.id).exists()
