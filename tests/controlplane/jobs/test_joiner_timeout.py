"""A grow does not wait forever for joiners: those that have not reported standby within
RESCALE_JOIN_TIMEOUT_S are given up on, the ready ones join (or the grow is abandoned),
the scale_workers command fails saying why and the job runs again."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.jobs import tasks
from controlplane.jobs.models import ClusterVersion, Command, Event, Job, Node, Worker
from controlplane.jobs.services.commands import command_issue
from controlplane.jobs.services.elastic import joiners_expire
from controlplane.jobs.services.jobs import job_create
from controlplane.jobs.services.nodes import join_token_create, node_enrol
from controlplane.jobs.services.scheduling import job_place
from tests.controlplane.jobs.agent_steps import run_placed
from tests.controlplane.jobs.agent_steps import worker_report as _report

pytestmark = pytest.mark.django_db


def _enrol(name: str, slots: int) -> Node:
    _, token = join_token_create(label="test")
    node, _ = node_enrol(
        join_token=token, name=name, address=f"{name}.local", slots=slots, labels={}
    )
    return node


@pytest.fixture
def nodes():
    return [_enrol("n1", 2), _enrol("n2", 2)]


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


def _age(job, ranks, seconds=600):
    Worker.objects.filter(job=job, rank__in=ranks).update(
        created_at=timezone.now() - timedelta(seconds=seconds)
    )


def _stops(job) -> dict[str, list[int]]:
    """The joiner stops issued for ``job``: node name → the joiners it is to end. They
    share one sequence number (one command, every node of the job)."""
    stops = list(Command.objects.filter(job=job, type="stop").select_related("node"))
    assert len({c.seq for c in stops}) == 1, [c.seq for c in stops]
    assert all(
        "terminate" not in c.payload and "did not report standby" in c.payload["reason"]
        for c in stops
    )
    return {c.node.name: c.payload["joiners"] for c in stops}


def _grow(job, value):
    command_issue(job=job, type="scale_workers", value=value, issued_by="user:alice")
    job.refresh_from_db()
    assert job.status == "rescaling"
    return job


def test_joiners_within_the_timeout_are_left_alone(user, nodes):
    job = _grow(_running_job(user), 4)
    assert joiners_expire(timeout_s=180) == []
    assert set(Worker.objects.filter(job=job, rank__in=[2, 3]).values_list("state", flat=True)) == {
        "joining"
    }
    assert Job.objects.get(id=job.id).status == "rescaling"


def test_a_grow_whose_joiners_never_report_is_abandoned_and_the_job_runs_again(user, nodes):
    job = _grow(_running_job(user), 4)
    joiner_node = Worker.objects.get(job=job, rank=2).node
    _age(job, [2, 3])
    assert joiners_expire(timeout_s=180) == [job.id]
    job.refresh_from_db()
    assert job.status == "running" and job.cluster_version == 1 and job.workers_current == 2
    assert set(Worker.objects.filter(job=job, rank__in=[2, 3]).values_list("state", flat=True)) == {
        "failed"
    }
    scale = Command.objects.filter(job=job, type="scale_workers")
    assert {c.state for c in scale} == {"failed"}
    assert all(
        "joiner(s) 2, 3 on node(s)" in c.error
        and "did not report standby within 180 s" in c.error
        and "the grow is abandoned" in c.error
        for c in scale
    )
    assert Event.objects.filter(job=job, data__event="join_timeout").count() == 1
    assert Event.objects.filter(
        job=job, message__startswith="scale_workers 4 failed: joiner(s) 2, 3"
    ).exists()
    # The joiners' agent is told to end them; every node of the job gets the stop (with
    # nothing to end where no joiner ran), so the command sequence stays gap-free.
    stops = _stops(job)
    assert stops[joiner_node.name] == [2, 3]
    member_nodes = {
        w.node.name for w in Worker.objects.filter(job=job, rank__in=[0, 1]).select_related("node")
    }
    assert set(stops) == member_nodes | {joiner_node.name}
    assert all(ranks == [] for name, ranks in stops.items() if name != joiner_node.name)
    assert Event.objects.filter(
        job=job, message=f"stop the abandoned joiner(s) 2, 3 on node {joiner_node.name}"
    )
    assert joiners_expire(timeout_s=180) == []  # given up on once

    # That stop does not hold the next grow up, and a late report of a given-up joiner is ignored.
    _report(job, 2, "standby")
    assert Worker.objects.get(job=job, rank=2).state == "failed"
    command_issue(job=job, type="scale_workers", value=3, issued_by="user:alice")
    assert Worker.objects.filter(job=job, state="joining").count() == 1


def test_the_ready_joiners_join_without_the_late_one(user, nodes):
    job = _grow(_running_job(user), 4)
    _report(job, 2, "standby")
    _age(job, [2, 3])
    assert joiners_expire(timeout_s=60) == [job.id]
    job.refresh_from_db()
    v2 = ClusterVersion.objects.get(job=job, version=2)
    assert v2.workers == [0, 1, 2] and v2.actor == "user:alice"
    assert job.status == "rescaling" and job.workers_current == 3
    scale = Command.objects.filter(job=job, type="scale_workers")
    assert {c.state for c in scale} == {"failed"}
    assert all(
        "joiner(s) 3 on node(s)" in c.error and "the other 1 joiner(s) join without them" in c.error
        for c in scale
    )
    # Joiner 2 runs on the same node as the abandoned one: that node ends joiner 3 only.
    stops = _stops(job)
    assert stops[Worker.objects.get(job=job, rank=3).node.name] == [3]
    assert sorted(r for ranks in stops.values() for r in ranks) == [3]
    for rank in (0, 1, 2):
        _report(job, rank, "rescaled", version=2, step=40)
    job.refresh_from_db()
    assert job.status == "running" and job.workers_current == 3


def test_a_joiner_on_a_node_that_runs_members_is_stopped_alone(user):
    big = _enrol("big", 3)
    job = _running_job(user, initial=2)
    assert set(Worker.objects.filter(job=job).values_list("node", flat=True)) == {big.id}
    job = _grow(job, 3)
    assert Worker.objects.get(job=job, rank=2).node == big
    _age(job, [2])
    joiners_expire(timeout_s=180)
    job.refresh_from_db()
    assert job.status == "running"
    # Its agent ends that one process; the members there train on.
    assert _stops(job) == {"big": [2]}


def test_the_periodic_task_uses_the_rescale_join_timeout_setting(user, nodes, settings):
    job = _grow(_running_job(user), 3)
    settings.RESCALE_JOIN_TIMEOUT_S = 1000
    _age(job, [2], seconds=600)
    tasks.expire_joiners()
    assert Worker.objects.get(job=job, rank=2).state == "joining"
    settings.RESCALE_JOIN_TIMEOUT_S = 300
    tasks.expire_joiners()
    assert Worker.objects.get(job=job, rank=2).state == "failed"
    assert Job.objects.get(id=job.id).status == "running"


def test_a_grow_from_version_1_whose_joiners_all_die_returns_to_running(user, nodes):
    # The initial workers never report "rescaled" for version 1; this used to stay rescaling.
    job = _grow(_running_job(user), 4)
    _report(job, 2, "exited", code=1, error="ImportError")
    _report(job, 3, "exited", code=1, error="ImportError")
    job.refresh_from_db()
    assert job.status == "running" and job.cluster_version == 1
    assert {c.state for c in Command.objects.filter(job=job, type="scale_workers")} == {"failed"}


def test_the_setting_defaults_to_180_seconds():
    from django.conf import settings

    assert settings.RESCALE_JOIN_TIMEOUT_S == 180.0
    assert settings.CELERY_BEAT_SCHEDULE["expire-joiners"]["task"] == "jobs.expire_joiners"
