"""Cluster-spec versions and elastic scaling at the service level: scale_workers
validation, grow by warm standbys, shrink by the highest ranks, worker crashes and
node loss, each ending in a new version (or a failed job) with the who and why."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.jobs.models import ClusterVersion, Command, Event, Job, Node, Worker
from controlplane.jobs.selectors import cluster_spec
from controlplane.jobs.services.commands import command_finish, command_issue
from controlplane.jobs.services.jobs import job_cancel, job_create
from controlplane.jobs.services.membership import workers_register
from controlplane.jobs.services.nodes import (
    join_token_create,
    node_enrol,
    node_heartbeat,
    nodes_mark_lost,
)
from controlplane.jobs.services.reports import job_report
from controlplane.jobs.services.scheduling import job_place
from tests.controlplane.jobs.agent_steps import run_placed
from tests.controlplane.jobs.agent_steps import worker_report as _report

pytestmark = pytest.mark.django_db


@pytest.fixture
def nodes():
    _, token = join_token_create(label="test", uses=2)
    made = []
    for i, slots in enumerate((2, 2), start=1):
        node, credential = node_enrol(
            join_token=token, name=f"n{i}", address=f"10.0.0.{i}", slots=slots, labels={}
        )
        CREDENTIALS[node.id] = credential
        made.append(node)
    return made


CREDENTIALS: dict[int, str] = {}


def _node_client(node):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {CREDENTIALS[node.id]}")
    return client


def _running_job(user, *, initial=2, low=1, high=4) -> Job:
    job = job_create(
        owner=user,
        name="elastic",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 32, "lr": 0.1},
        workers_initial=initial,
        workers_min=low,
        workers_max=high,
        strategy="ssgd",
        topology="ring",
    )
    assert job_place(job_id=job.id)
    return run_placed(job)


def _worker(job, rank) -> Worker:
    return Worker.objects.select_related("node").get(job=job, rank=rank)


def _rescaled_all(job, *, step=100):
    job.refresh_from_db()
    current = ClusterVersion.objects.get(job=job, version=job.cluster_version)
    for i, rank in enumerate(current.workers):
        _report(
            job, rank, "rescaled", version=current.version, cluster_rank=i, step=step, paused_s=0.2
        )
    job.refresh_from_db()
    return job


def test_version_1_is_written_once_every_initial_worker_registered_its_port(user, nodes):
    job = job_create(
        owner=user,
        name="j",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 32, "lr": 0.1},
        workers_initial=2,
        workers_min=1,
        workers_max=3,
        strategy="ssgd",
        topology="ring",
    )
    job_place(job_id=job.id)
    node = _worker(job, 0).node
    workers_register(node=node, job_id=job.id, workers=[{"rank": 0, "port": 7000}])
    job.refresh_from_db()
    assert job.cluster_version == 0 and cluster_spec(job=job)["complete"] is False
    workers_register(node=node, job_id=job.id, workers=[{"rank": 1, "port": 7001}])
    spec = _node_client(node).get(f"/api/v1/agent/jobs/{job.id}/cluster/").json()
    assert spec == {
        "job": job.id,
        "version": 1,
        "world_size": 2,
        "complete": True,
        "workers_min": 1,
        "members": [f"{node.address}:7000", f"{node.address}:7001"],
    }
    v1 = ClusterVersion.objects.get(job=job)
    assert (v1.version, v1.workers, v1.actor) == (1, [0, 1], "scheduler")
    assert Event.objects.filter(job=job, data__cluster_version=1).exists()


@pytest.mark.parametrize(
    "value, status, words",
    [
        (5, 400, "from 1 to 4"),
        (0, 400, "from 1 to 4"),
        (2, 400, "already has 2"),
        ("3", 400, "integer"),
    ],
)
def test_scale_workers_outside_the_bounds_is_a_400_that_says_why(
    api, user, nodes, value, status, words
):
    job = _running_job(user)
    response = api.post(
        f"/api/v1/jobs/{job.id}/commands/",
        {"action": "scale_workers", "value": value},
        format="json",
    )
    assert response.status_code == status, response.json()
    assert words in response.json()["message"]


def test_scale_workers_on_a_job_that_is_not_elastic_or_not_running_is_refused(api, user, nodes):
    fixed = _running_job(user, initial=2, low=2, high=2)
    response = api.post(
        f"/api/v1/jobs/{fixed.id}/commands/", {"action": "scale_workers", "value": 3}, format="json"
    )
    assert response.status_code == 400 and "not elastic" in response.json()["message"]
    elastic = _running_job(user)
    job_cancel(job=elastic, actor="user:alice")
    response = api.post(
        f"/api/v1/jobs/{elastic.id}/commands/",
        {"action": "scale_workers", "value": 3},
        format="json",
    )
    assert response.status_code == 409 and "needs a running job" in response.json()["message"]


def test_grow_starts_warm_standbys_and_lets_them_in_when_all_are_ready(api, user, nodes):
    job = _running_job(user)
    old = cluster_spec(job=job)["members"]
    response = api.post(
        f"/api/v1/jobs/{job.id}/commands/", {"action": "scale_workers", "value": 4}, format="json"
    )
    assert response.status_code == 201, response.json()
    job.refresh_from_db()
    assert job.status == "rescaling" and job.cluster_version == 1
    joiners = list(Worker.objects.filter(job=job, state="joining").select_related("node"))
    assert [w.rank for w in joiners] == [2, 3]
    assert {w.node_id for w in joiners} != {_worker(job, 0).node_id}  # the node with free slots
    command = Command.objects.get(job=job, type="scale_workers", node=joiners[0].node)
    join = command.payload["join"]
    assert join["workers"] == [{"rank": 2, "cluster_rank": 2}, {"rank": 3, "cluster_rank": 3}]
    assert join["cluster_version"] == 1 and join["members"] == old and join["entrypoint"]
    # Other commands wait until the job runs again; stop does not.
    busy = api.post(
        f"/api/v1/jobs/{job.id}/commands/", {"action": "set_lr", "value": 0.5}, format="json"
    )
    assert busy.status_code == 409 and "rescaling" in busy.json()["message"]

    workers_register(
        node=joiners[0].node,
        job_id=job.id,
        workers=[{"rank": 2, "port": 7102}, {"rank": 3, "port": 7103}],
    )
    _report(job, 2, "standby", address=f"{joiners[0].node.address}:7102")
    job.refresh_from_db()
    assert job.cluster_version == 1  # waits for the other joiner
    _report(job, 3, "standby")
    job.refresh_from_db()
    v2 = ClusterVersion.objects.get(job=job, version=2)
    assert v2.members == old + [
        f"{joiners[0].node.address}:7102",
        f"{joiners[0].node.address}:7103",
    ]
    assert v2.workers == [0, 1, 2, 3] and v2.actor == "user:alice" and "standby" in v2.reason
    assert job.status == "rescaling" and job.workers_current == 4

    _report(job, 0, "rescaled", version=2, step=50)
    assert Job.objects.get(id=job.id).status == "rescaling"
    job = _rescaled_all(job, step=50)
    assert job.status == "running"
    commands = Command.objects.filter(job=job, type="scale_workers")
    assert {c.state for c in commands} == {"applied"} and {c.applied_step for c in commands} == {50}
    assert api.get(f"/api/v1/jobs/{job.id}/").json()["workers"][3]["cluster_rank"] == 3


def test_grow_beyond_the_free_slots_is_a_409(api, user, nodes):
    job = _running_job(user, initial=2, low=1, high=8)
    response = api.post(
        f"/api/v1/jobs/{job.id}/commands/", {"action": "scale_workers", "value": 5}, format="json"
    )
    assert response.status_code == 409
    assert (
        "Not enough free slots" in response.json()["message"]
        and response.json()["details"]["free_slots"] == 2
    )
    assert Job.objects.get(id=job.id).status == "running"


def test_shrink_removes_the_highest_ranks_at_once(user, nodes):
    job = _running_job(user, initial=3, low=1, high=4)
    command_issue(job=job, type="scale_workers", value=2, issued_by="policy:p/r")
    job.refresh_from_db()
    assert job.status == "rescaling" and job.cluster_version == 2 and job.workers_current == 2
    v2 = ClusterVersion.objects.get(job=job, version=2)
    assert v2.workers == [0, 1] and v2.actor == "policy:p/r" and "leave" in v2.reason
    _report(job, 2, "left", version=2, step=80)
    assert _worker(job, 2).state == "left"
    job = _rescaled_all(job, step=80)
    assert job.status == "running"
    assert set(
        Command.objects.filter(job=job, type="scale_workers").values_list("state", flat=True)
    ) == {"applied"}


def test_a_member_crash_in_an_elastic_job_writes_a_version_without_it(user, nodes):
    job = _running_job(user, initial=3, low=2, high=4)
    _report(job, 1, "peer_failed", version=1, error="connection reset")
    _report(job, 1, "exited", code=3, error="Traceback ...")
    job.refresh_from_db()
    v2 = ClusterVersion.objects.get(job=job, version=2)
    assert (
        v2.workers == [0, 2] and v2.actor.startswith("node:") and "exited with code 3" in v2.reason
    )
    assert _worker(job, 1).state == "failed" and job.status == "rescaling"
    job = _rescaled_all(job)
    assert job.status == "running" and job.workers_current == 2

    # One more would leave 1 < min 2: the job fails and the survivors are terminated.
    _report(job, 2, "exited", code=1)
    job.refresh_from_db()
    assert job.status == "failed" and "below the job's workers min of 2" in job.status_reason
    stop = Command.objects.get(job=job, type="stop")
    assert stop.payload["terminate"] is True and stop.node == _worker(job, 0).node


def test_a_stopped_report_carries_a_crash_the_websocket_frame_has_not_yet(user, nodes):
    job = _running_job(user, initial=2, low=1, high=2)
    node = _worker(job, 1).node
    job_report(
        node=node,
        job_id=job.id,
        status="stopped",
        workers=[{"rank": 1, "state": "failed", "code": 9, "error": "killed"}],
    )
    job.refresh_from_db()
    assert job.cluster_version == 2 and ClusterVersion.objects.get(job=job, version=2).workers == [
        0
    ]


def test_a_lost_node_shrinks_an_elastic_job_when_enough_remain(user, nodes):
    job = _running_job(user, initial=2, low=1, high=4)
    command_issue(job=job, type="scale_workers", value=4, issued_by="user:alice")
    joiner_node = _worker(job, 2).node
    workers_register(
        node=joiner_node,
        job_id=job.id,
        workers=[{"rank": 2, "port": 7102}, {"rank": 3, "port": 7103}],
    )
    _report(job, 2, "standby")
    _report(job, 3, "standby")
    job = _rescaled_all(job)
    assert job.status == "running" and job.cluster_version == 2
    Node.objects.filter(id=joiner_node.id).update(
        last_heartbeat=timezone.now() - timedelta(seconds=600)
    )
    Node.objects.exclude(id=joiner_node.id).update(last_heartbeat=timezone.now())
    assert nodes_mark_lost(timeout_s=30) == [joiner_node.id]
    job.refresh_from_db()
    v3 = ClusterVersion.objects.get(job=job, version=3)
    assert (
        v3.workers == [0, 1]
        and f"node {joiner_node.name} lost" in v3.reason
        and v3.actor == "scheduler"
    )
    assert job.status == "rescaling"
    assert set(
        Worker.objects.filter(job=job, node=joiner_node).values_list("state", flat=True)
    ) == {"failed"}


def test_a_lost_node_fails_the_job_when_too_few_would_remain(user, nodes):
    job = _running_job(user, initial=2, low=2, high=3)
    node = _worker(job, 0).node
    Node.objects.filter(id=node.id).update(last_heartbeat=timezone.now() - timedelta(seconds=600))
    nodes_mark_lost(timeout_s=30)
    job.refresh_from_db()
    assert job.status == "failed" and f"node {node.name} lost" in job.status_reason


def test_a_joiner_that_dies_before_joining_does_not_block_the_others(user, nodes):
    job = _running_job(user)
    command_issue(job=job, type="scale_workers", value=4, issued_by="user:alice")
    _report(job, 2, "standby")
    _report(job, 3, "exited", code=1, error="ImportError")
    job.refresh_from_db()
    assert ClusterVersion.objects.get(job=job, version=2).workers == [0, 1, 2]
    job = _rescaled_all(job)
    assert job.status == "running"
    command = Command.objects.filter(job=job, type="scale_workers").first()
    assert command.state == "failed" and "not 4" in command.error


def test_heartbeat_without_a_job_whose_workers_here_all_left_does_not_fail_it(user, nodes):
    job = _running_job(user, initial=2, low=1, high=4)
    command_issue(job=job, type="scale_workers", value=4, issued_by="user:alice")
    joiner_node = _worker(job, 2).node
    _report(job, 2, "standby")
    _report(job, 3, "standby")
    job = _rescaled_all(job)
    command_issue(job=job, type="scale_workers", value=2, issued_by="user:alice")
    job_report(
        node=joiner_node,
        job_id=job.id,
        status="stopped",
        workers=[{"rank": 2, "state": "left"}, {"rank": 3, "state": "left"}],
    )
    node_heartbeat(node=joiner_node, running_jobs=[])
    job.refresh_from_db()
    assert job.status == "rescaling" and job.cluster_version == 3
    assert _rescaled_all(job).status == "running"


def test_an_agent_back_from_a_node_taken_for_lost_is_told_to_end_those_workers(user, nodes):
    # Its agent was away past the heartbeat timeout: the job shrank without the node's
    # workers. When the agent comes back (re-attached to them, they trained on unseen),
    # its heartbeat reply releases the job there; the other node keeps it.
    job = _running_job(user, initial=2, low=1, high=4)
    command_issue(job=job, type="scale_workers", value=4, issued_by="user:alice")
    joiner_node = _worker(job, 2).node
    member_node = _worker(job, 0).node
    assert joiner_node != member_node
    _report(job, 2, "standby")
    _report(job, 3, "standby")
    job = _rescaled_all(job)
    assert node_heartbeat(node=joiner_node, running_jobs=[job.id]) == []
    Node.objects.filter(id=joiner_node.id).update(
        last_heartbeat=timezone.now() - timedelta(seconds=600)
    )
    nodes_mark_lost(timeout_s=30)

    reply = _node_client(joiner_node).post(
        "/api/v1/agent/heartbeat/", {"jobs": [job.id, 999_999]}, format="json"
    )
    assert reply.status_code == 200 and reply.json()["release"] == [job.id, 999_999]
    assert node_heartbeat(node=member_node, running_jobs=[job.id]) == []
    job.refresh_from_db()
    assert job.status in ("rescaling", "running") and job.workers_current == 2


def test_a_finished_job_whose_workers_exit_here_is_not_released_early(user, nodes):
    # Exited (not failed) workers may still be finishing (final metrics, evaluation):
    # their end is the agent's, not the heartbeat's.
    job = _running_job(user, initial=2, low=1, high=2)
    node = _worker(job, 0).node
    job_report(node=node, job_id=job.id, status="succeeded")
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert node_heartbeat(node=node, running_jobs=[job.id]) == []


def _stop_everywhere(job, *, issued_by="user:alice", step=50):
    command_issue(job=job, type="stop", issued_by=issued_by)
    for command in Command.objects.filter(job=job, type="stop"):
        command_finish(node=command.node, command_id=command.id, ok=True, step=step)
    for node in {w.node for w in Worker.objects.filter(job=job).select_related("node")}:
        job_report(node=node, job_id=job.id, status="stopped")
    job.refresh_from_db()
    return job


def test_a_stop_action_ends_the_job_succeeded_once_its_workers_are_gone(user, nodes):
    # The `stop` action (manual or a policy's early stop): the workers stop training at one
    # step and exit cleanly; the job then succeeds, saying who stopped it and where.
    job = _stop_everywhere(
        _running_job(user, initial=2, low=2, high=2), issued_by="policy:early-stop"
    )
    assert job.status == "succeeded" and job.finished_at is not None
    assert job.status_reason == "stopped by policy:early-stop at step 50"
    assert set(Worker.objects.filter(job=job).values_list("state", flat=True)) == {"exited"}


def test_a_node_that_stops_while_others_still_run_does_not_end_the_job(user, nodes):
    job = _running_job(user, initial=2, low=1, high=4)
    command_issue(job=job, type="scale_workers", value=4, issued_by="user:alice")
    _report(job, 2, "standby")
    _report(job, 3, "standby")
    job = _rescaled_all(job)
    command_issue(job=job, type="stop", issued_by="user:alice")
    joiner_node = _worker(job, 2).node
    job_report(node=joiner_node, job_id=job.id, status="stopped")
    job.refresh_from_db()
    assert job.status == "running"  # node 1's workers have not exited yet
