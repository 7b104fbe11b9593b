"""Events belong to the run that was the job's current one when they happened: the events
API shows each event's run and filters by ?run=N, the live event frames carry the run,
and migration 0011 gives existing events to the run that was current then."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.jobs.lifecycle import event_record
from controlplane.jobs.models import Event, Job
from controlplane.jobs.services.jobs import job_restart
from controlplane.live import channels
from tests.controlplane.jobs.agent_steps import fail as _fail
from tests.controlplane.jobs.agent_steps import new_job as _job
from tests.controlplane.jobs.agent_steps import start as _start
from tests.controlplane.migrations import migrate, migrate_to_latest


def _restarted(job: Job) -> Job:
    job = _fail(job)
    job_restart(job=job, actor="user:alice", resume_from=None)
    return _start(Job.objects.get(id=job.id))


@pytest.mark.django_db
def test_events_carry_their_run_and_filter_by_it(api, user, nodes):
    job = _job(user, initial=1)
    created = Event.objects.filter(job=job).order_by("id").first()
    assert created.run is None  # before the first placement there is no run
    job = _restarted(_start(job))
    events = api.get(f"/api/v1/jobs/{job.id}/events/").json()
    assert events[0]["run"] is None and "created" in events[0]["message"]
    runs = [e["run"] for e in events]
    assert runs == sorted(runs, key=lambda r: r or 0)  # run 1's, then run 2's, never mixed
    assert {1, 2} <= set(runs)
    restart = next(e for e in events if e["run"] == 2)
    assert "pending" in restart["message"]  # the restart's own transition opens run 2

    only_1 = api.get(f"/api/v1/jobs/{job.id}/events/?run=1").json()
    assert only_1 and {e["run"] for e in only_1} == {1}
    assert [e["id"] for e in only_1] == [e["id"] for e in events if e["run"] == 1]
    only_2 = api.get(f"/api/v1/jobs/{job.id}/events/?run=2").json()
    assert only_2 and {e["run"] for e in only_2} == {2}


@pytest.mark.django_db
def test_bad_run_filters_say_what_to_fix(api, user, nodes):
    job = _start(_job(user, initial=1))
    unknown = api.get(f"/api/v1/jobs/{job.id}/events/?run=7")
    assert unknown.status_code == 404
    assert "has no run 7" in unknown.json()["message"] and unknown.json()["details"]["runs"] == [1]
    for bad in ("two", "0", "-1"):
        response = api.get(f"/api/v1/jobs/{job.id}/events/?run={bad}")
        assert response.status_code == 400, bad
        assert "run" in response.json()["message"]


@pytest.mark.django_db
def test_event_frames_carry_the_run(user, nodes, django_capture_on_commit_callbacks):
    job = _restarted(_start(_job(user, initial=1)))
    channels.frame_log_reset(job.id)  # frames an earlier test database left under this job id
    with django_capture_on_commit_callbacks(execute=True):
        event = event_record(job=job, kind=Event.Kind.NODE, actor="test", message="hello")
    frames, _ = channels.frames_after(job.id, 0)
    [frame] = [
        f["data"]
        for f in frames
        if f["type"] == channels.FRAME_EVENT and f["data"]["id"] == event.id
    ]
    assert frame["run"] == 2


@pytest.mark.django_db(transaction=True)
def test_migration_gives_existing_events_the_run_current_then():
    apps = migrate([("jobs", "0010_job_workers_wanted")])
    try:
        User = apps.get_model("auth", "User")
        Job, Run, Event = (apps.get_model("jobs", name) for name in ("Job", "Run", "Event"))
        owner = User.objects.create(username="old-timer")
        job = Job.objects.create(
            name="j",
            status="running",
            owner=owner,
            entrypoint="examples.digits",
            batch_size=32,
            learning_rate=0.1,
            hyperparameters={},
        )
        t0 = timezone.now() - timedelta(hours=1)
        before = Event.objects.create(job=job, kind="state", actor="u", message="created")
        run1 = Run.objects.create(job=job, number=1, status="failed", created_by="scheduler")
        during_1 = Event.objects.create(job=job, kind="command", actor="u", message="a")
        run2 = Run.objects.create(job=job, number=2, status="running", created_by="user:u")
        during_2 = Event.objects.create(job=job, kind="command", actor="u", message="b")
        # Fix the times: created_at is auto_now_add.
        for row, minutes in ((before, 0), (run1, 1), (during_1, 2), (run2, 3), (during_2, 4)):
            type(row).objects.filter(id=row.id).update(created_at=t0 + timedelta(minutes=minutes))

        apps = migrate([("jobs", "0011_events_per_run")])
        Event = apps.get_model("jobs", "Event")
        assert Event.objects.get(id=before.id).run_id is None
        assert Event.objects.get(id=during_1.id).run_id == run1.id
        assert Event.objects.get(id=during_2.id).run_id == run2.id
    finally:
        migrate_to_latest()
