"""Housekeeping: unacknowledged commands expire; old jobs' metric points are deleted."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from controlplane.jobs.models import Command, Event, Job
from controlplane.jobs.services.commands import command_issue, commands_expire
from controlplane.jobs.services.jobs import job_create
from controlplane.jobs.services.nodes import join_token_create, node_enrol
from controlplane.jobs.services.scheduling import job_place
from controlplane.metrics.models import MetricPoint
from controlplane.metrics.services import metrics_apply_retention
from tests.controlplane.metric_points import run_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def placed_job(user):
    _, token = join_token_create()
    node_enrol(join_token=token, name="n1", address="127.0.0.1", slots=4, labels={})
    job = job_create(
        owner=user,
        name="j",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 8, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
    )
    job_place(job_id=job.id)
    return Job.objects.get(id=job.id)


def test_unacknowledged_command_expires_and_the_job_is_told(placed_job):
    Job.objects.filter(id=placed_job.id).update(status="running")
    [command] = command_issue(job=placed_job, type="set_lr", value=0.5, issued_by="user:alice")
    assert commands_expire(ttl_s=60) == 0
    Command.objects.filter(id=command.id).update(created_at=timezone.now() - timedelta(minutes=5))
    assert commands_expire(ttl_s=60) == 1
    command.refresh_from_db()
    assert command.state == "expired" and "within 60 s" in command.error
    assert Event.objects.filter(job=placed_job, message__contains="expired").exists()
    assert commands_expire(ttl_s=60) == 0  # already expired: counted once


def test_retention_deletes_points_of_old_finished_jobs_only(placed_job, user):
    other = job_create(
        owner=user,
        name="running",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 8, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
    )
    when = datetime(2020, 1, 1, tzinfo=UTC)
    for job in (placed_job, other):
        MetricPoint.objects.bulk_create(
            [
                MetricPoint(job=job, run=run_of(job), name="loss", step=s, value=1.0, time=when)
                for s in range(10)
            ]
        )
    Job.objects.filter(id=placed_job.id).update(
        status="succeeded", finished_at=timezone.now() - timedelta(days=40)
    )
    assert metrics_apply_retention(days=30, chunk=3) == 10
    assert not MetricPoint.objects.filter(job=placed_job).exists()
    assert MetricPoint.objects.filter(job=other).count() == 10
