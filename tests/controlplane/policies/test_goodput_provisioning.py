"""Goodput-driven provisioning on the real control plane (services, PostgreSQL): running
elastic jobs that reported step times and a noise scale get slots moved to the one that
gains from them, through scale_workers commands; jobs without measurements keep theirs;
the beat task does nothing unless switched on."""

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.jobs.models import Command, Event
from controlplane.jobs.services.nodes import join_token_create, node_enrol
from controlplane.metrics.models import MetricPoint
from controlplane.policies import provisioning, tasks
from controlplane.policies.goodput import StepTimeModel
from tests.controlplane.jobs.agent_steps import new_job, start

pytestmark = pytest.mark.django_db

SCALABLE = StepTimeModel(0.01, 0.002, 0.002, 0.0, 0.002, 0.0)  # cheap sync
POOR = StepTimeModel(0.001, 0.0001, 0.2, 0.0, 0.2, 0.0)  # sync dwarfs compute


@pytest.fixture
def big_node():
    _, token = join_token_create(label="test")
    return node_enrol(join_token=token, name="big", address="10.0.0.9", slots=8, labels={})[0]


def report(job, truth, gns):
    """Whole-job step times at two batch sizes with the job's 4 workers."""
    now = timezone.now()
    points = []
    for i, batch in enumerate([32, 32, 64, 64]):
        values = {
            "compute_time": truth.compute_time(batch / 4),
            "comm_time": truth.sync_time(4, 1),
            "batch_size": batch,
            "workers": 4,
            "gns": gns,
        }
        points += [
            MetricPoint(
                job=job, run_id=job.current_run_id, name=name, rank=None, step=10 * (i + 1),
                value=value, time=now - timedelta(seconds=10 - i),
            )
            for name, value in values.items()
        ]  # fmt: skip
    MetricPoint.objects.bulk_create(points)


def test_slots_move_from_the_job_that_cannot_use_them_to_the_one_that_can(user, big_node):
    scalable = start(new_job(user, initial=4, low=1, high=7))
    poor = start(new_job(user, initial=4, low=1, high=7))
    report(scalable, SCALABLE, gns=4000.0)
    report(poor, POOR, gns=10.0)
    moves = provisioning.cluster_allocate(interval_s=60.0, restart_s=0.0)
    by_job = {m.job_id: m for m in moves}
    # The poor job shrinks first (to one worker: a second one only adds sync time).
    assert by_job[poor.id].workers_to == 1 and by_job[poor.id].carried_out
    shrink = Command.objects.get(job=poor, type="scale_workers")
    assert shrink.payload == {"value": 1} and shrink.issued_by == "provisioning:goodput"
    assert by_job[scalable.id].workers_to == 7
    decision = Event.objects.filter(job=poor, kind="decision").first()
    assert "4 → 1 workers" in decision.message
    assert decision.data["speedup_to"] > decision.data["speedup_from"]
    # The grow waits for the shrink's workers to leave: asked, refused for want of
    # room, recorded on the job; the next round carries it out.
    if not by_job[scalable.id].carried_out:
        assert "Not enough free slots" in by_job[scalable.id].reason
        assert Event.objects.filter(job=scalable, message__contains="not carried out").exists()


def test_jobs_without_measurements_are_left_as_they_are(user, big_node):
    measured = start(new_job(user, initial=4, low=1, high=7))
    unmeasured = start(new_job(user, initial=4, low=1, high=7))
    report(measured, POOR, gns=10.0)
    moves = provisioning.cluster_allocate(interval_s=60.0, restart_s=0.0)
    assert [m.job_id for m in moves] == [measured.id]
    assert not Command.objects.filter(job=unmeasured, type="scale_workers").exists()


def test_the_restart_penalty_keeps_a_job_put_when_moving_gains_little(user, big_node):
    a = start(new_job(user, initial=4, low=1, high=7))
    b = start(new_job(user, initial=4, low=1, high=7))
    report(a, SCALABLE, gns=4000.0)
    report(b, SCALABLE, gns=3000.0)
    assert provisioning.cluster_allocate(interval_s=60.0, restart_s=50.0) == []


def test_the_beat_task_does_nothing_unless_switched_on(user, big_node, settings):
    poor = start(new_job(user, initial=4, low=1, high=7))
    report(poor, POOR, gns=10.0)
    settings.GOODPUT_ALLOCATOR_INTERVAL_S = 0.0
    tasks.allocate_cluster()
    assert not Command.objects.filter(job=poor, type="scale_workers").exists()
    settings.GOODPUT_ALLOCATOR_INTERVAL_S = 30.0
    tasks.allocate_cluster()
    assert Command.objects.get(job=poor, type="scale_workers").payload == {"value": 1}


def test_a_job_the_allocator_just_moved_is_held_at_its_count_for_a_few_rounds(user, big_node):
    # Round 1 shrinks the poor job for the scalable one, whose grow finds no room yet. The
    # shrink done, the poor job reports anew and now looks as if it would gain from its
    # slots back; re-modelled at once it would win them back and the two jobs would trade
    # them each round. It is held at its count until COOLDOWN_ROUNDS have passed.
    scalable = start(new_job(user, initial=4, low=1, high=7))
    poor = start(new_job(user, initial=4, low=1, high=7))
    report(scalable, SCALABLE, gns=4000.0)
    report(poor, POOR, gns=10.0)
    first = provisioning.cluster_allocate(interval_s=60.0, restart_s=0.0)
    assert {m.job_id: m.workers_to for m in first if m.carried_out}.get(poor.id) == 1, first
    type(poor).objects.filter(id=poor.id).update(status="running")  # its workers re-formed
    MetricPoint.objects.filter(job=poor).delete()
    report(poor, SCALABLE, gns=4000.0)
    second = provisioning.cluster_allocate(interval_s=60.0, restart_s=0.0)
    assert poor.id not in {m.job_id for m in second}, second
    Command.objects.filter(job=poor, type="scale_workers").update(
        created_at=timezone.now() - timedelta(seconds=provisioning.COOLDOWN_ROUNDS * 60 + 1)
    )
    third = provisioning.cluster_allocate(interval_s=60.0, restart_s=0.0)
    assert poor.id in {m.job_id for m in third}, third


def test_a_job_is_modelled_on_its_whole_run_not_only_its_latest_reports(user, big_node):
    # The job ran 10 steps with 2 workers at batch 16, then 60 with 4 workers at batch 64:
    # its latest 50 reports are all at one configuration. Fitted on them alone (as the
    # allocator once was), compute would look proportional to the batch and sync the same
    # for any worker count; the run's profile keeps the first configuration in the fit.
    truth = StepTimeModel(0.05, 0.002, 0.01, 0.02, 0.01, 0.02)
    job = start(new_job(user, initial=4, low=1, high=7))
    now = timezone.now()
    points = []
    for step in range(1, 71):
        workers, batch = (2, 16) if step <= 10 else (4, 64)
        values = {
            "compute_time": truth.compute_time(batch / workers),
            "comm_time": truth.sync_time(workers, 1),
            "batch_size": batch,
            "workers": workers,
            "gns": 1000.0,
        }
        points += [
            MetricPoint(
                job=job, run_id=job.current_run_id, name=name, rank=None, step=step,
                value=value, time=now - timedelta(seconds=100 - step),
            )
            for name, value in values.items()
        ]  # fmt: skip
    MetricPoint.objects.bulk_create(points)
    demand = provisioning.job_demand(job)
    assert demand is not None
    fitted = demand.model.step_time
    for local_batch in (8, 16):
        assert fitted.compute_time(local_batch) == pytest.approx(truth.compute_time(local_batch))
    for workers in (2, 4, 6):
        assert fitted.sync_time(workers, 1) == pytest.approx(truth.sync_time(workers, 1))
