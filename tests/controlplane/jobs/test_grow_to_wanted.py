"""Elastic jobs and free slots: a job short of room starts with as many workers as fit (at
least its minimum), and the scheduler grows a running elastic job back to the size it
should have (its initial size, or the last size a user or a policy asked for) when slots
are free — after a crash, a lost node, or a placement short of room — without
starving queued jobs or retrying a failing grow in a tight loop."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.errors import Conflict
from controlplane.jobs import tasks
from controlplane.jobs.models import ClusterVersion, Command, Event, Job, Node, Worker
from controlplane.jobs.services.commands import command_issue
from controlplane.jobs.services.elastic import jobs_grow_to_wanted, joiners_expire
from controlplane.jobs.services.jobs import job_create
from controlplane.jobs.services.membership import workers_register
from controlplane.jobs.services.nodes import join_token_create, node_enrol
from controlplane.jobs.services.scheduling import job_place
from tests.controlplane.jobs.agent_steps import run_placed as _start
from tests.controlplane.jobs.agent_steps import worker_report as _report

pytestmark = pytest.mark.django_db


def _enrol(name: str, slots: int) -> Node:
    _, token = join_token_create(label="test")
    node, _ = node_enrol(
        join_token=token, name=name, address=f"{name}.local", slots=slots, labels={}
    )
    return node


def _job(user, *, initial, low, high, name="elastic") -> Job:
    return job_create(
        owner=user,
        name=name,
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 32, "lr": 0.1},
        workers_initial=initial,
        workers_min=low,
        workers_max=high,
        strategy="ssgd",
        topology="ring",
    )


def _finish_rescale(job, *, step=100) -> Job:
    for w in Worker.objects.filter(job=job, state="joining").select_related("node"):
        workers_register(
            node=w.node, job_id=job.id, workers=[{"rank": w.rank, "port": 7000 + w.rank}]
        )
        _report(job, w.rank, "standby")
    job.refresh_from_db()
    current = ClusterVersion.objects.get(job=job, version=job.cluster_version)
    for i, rank in enumerate(current.workers):
        _report(
            job, rank, "rescaled", version=current.version, cluster_rank=i, step=step, paused_s=0.1
        )
    return Job.objects.get(id=job.id)


def _age_versions(job, seconds=120):
    ClusterVersion.objects.filter(job=job).update(
        created_at=timezone.now() - timedelta(seconds=seconds)
    )
    Command.objects.filter(job=job).update(created_at=timezone.now() - timedelta(seconds=seconds))


def test_an_elastic_job_short_of_room_starts_with_what_fits(user):
    _enrol("n1", 3)
    job = _job(user, initial=4, low=2, high=6)
    assert job_place(job_id=job.id)
    job.refresh_from_db()
    assert job.status == "scheduling" and job.workers_current == 3 and job.wanted_workers == 4
    assert "placed 3 worker(s)" in job.status_reason and "4 wanted" in job.status_reason
    assert Command.objects.get(job=job, type="start").payload["world_size"] == 3
    job = _start(job)
    assert job.status == "running" and job.cluster_version == 1
    assert ClusterVersion.objects.get(job=job, version=1).workers == [0, 1, 2]


def test_a_fixed_size_job_or_one_below_its_minimum_waits(user):
    _enrol("n1", 3)
    fixed = _job(user, initial=4, low=4, high=4, name="fixed")
    assert not job_place(job_id=fixed.id)
    elastic = _job(user, initial=5, low=4, high=6, name="needs four")
    assert not job_place(job_id=elastic.id)
    assert set(
        Job.objects.filter(id__in=[fixed.id, elastic.id]).values_list("status", flat=True)
    ) == {"pending"}


def test_the_job_grows_to_its_initial_size_once_slots_free_up(user):
    _enrol("n1", 3)
    job = _start(_place(_job(user, initial=4, low=2, high=6)))
    assert job.workers_current == 3
    assert jobs_grow_to_wanted(delay_s=30) == []  # no free slot
    _enrol("n2", 2)
    assert jobs_grow_to_wanted(delay_s=30) == []  # version 1 is too recent
    _age_versions(job)
    assert jobs_grow_to_wanted(delay_s=30) == [job.id]
    job.refresh_from_db()
    scale = Command.objects.filter(job=job, type="scale_workers")
    assert len({c.seq for c in scale}) == 1 and len(scale) == 2  # one command, to both nodes
    assert job.status == "rescaling" and all(
        c.issued_by == "scheduler" and c.payload["value"] == 4 for c in scale
    )
    assert Event.objects.filter(job=job, data__event="grow_to_wanted", data__to=4).exists()
    job = _finish_rescale(job)
    assert job.status == "running" and job.workers_current == 4
    _age_versions(job)
    assert jobs_grow_to_wanted(delay_s=30) == []  # it has what it wants


def _place(job) -> Job:
    assert job_place(job_id=job.id)
    return Job.objects.get(id=job.id)


def test_a_crashed_worker_is_replaced_but_a_users_shrink_is_kept(user):
    _enrol("n1", 4)
    job = _start(_place(_job(user, initial=3, low=1, high=4)))
    _report(job, 1, "exited", code=3, error="Traceback ...")
    job = _finish_rescale(job)
    assert job.workers_current == 2 and job.wanted_workers == 3
    _age_versions(job)
    assert jobs_grow_to_wanted(delay_s=30) == [job.id]
    job = _finish_rescale(job)
    assert job.workers_current == 3

    # A user's (or a policy's) scale sets the size the job should have.
    command_issue(job=job, type="scale_workers", value=2, issued_by="user:alice")
    job = _finish_rescale(job)
    assert job.workers_current == 2 and job.wanted_workers == 2
    _age_versions(job)
    assert jobs_grow_to_wanted(delay_s=30) == []


def test_a_refused_grow_does_not_change_the_wanted_size(user):
    _enrol("n1", 2)
    job = _start(_place(_job(user, initial=2, low=1, high=8)))
    with pytest.raises(Conflict):
        command_issue(job=job, type="scale_workers", value=8, issued_by="user:alice")
    job.refresh_from_db()
    assert job.wanted_workers == 2 and job.workers_wanted is None


def test_queued_jobs_get_free_slots_first(user):
    _enrol("n1", 3)
    job = _start(_place(_job(user, initial=4, low=2, high=6)))
    queued = _job(user, initial=4, low=4, high=4, name="queued")
    assert not job_place(job_id=queued.id)
    _enrol("n2", 2)
    _age_versions(job)
    assert jobs_grow_to_wanted(delay_s=30) == []
    # The periodic task places first (here the queued job still does not fit: 2 free).
    tasks.place_pending_jobs()
    assert Job.objects.get(id=queued.id).status == "pending"
    assert not Command.objects.filter(job=job, type="scale_workers").exists()


def test_a_failing_grow_is_retried_with_a_growing_delay(user):
    _enrol("n1", 3)
    job = _start(_place(_job(user, initial=4, low=2, high=6)))
    _enrol("n2", 2)
    for attempt, wait in enumerate((30, 60, 120)):
        _age_versions(job, seconds=wait - 5)
        assert jobs_grow_to_wanted(delay_s=30) == [], attempt
        _age_versions(job, seconds=wait + 5)
        assert jobs_grow_to_wanted(delay_s=30) == [job.id], attempt
        # Its joiner never reports standby: given up on.
        Worker.objects.filter(job=job, state="joining").update(
            created_at=timezone.now() - timedelta(hours=1)
        )
        joiners_expire(timeout_s=60)
        job.refresh_from_db()
        assert job.status == "running" and job.workers_current == 3
        assert (
            Command.objects.filter(job=job, type="scale_workers", state="failed")
            .values("seq")
            .distinct()
            .count()
            == attempt + 1
        )
