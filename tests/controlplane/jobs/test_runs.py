"""Runs: one attempt at executing a job. The first placement makes run 1, the job's status
changes are mirrored onto its current run, and a finished job restarts as a new run
(from its latest checkpoint, one asked for, or from scratch), placed again like a new
job; reports that cross a restart leave the new run alone."""

from __future__ import annotations

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from agent.protocol.control import ExitedEvent
from controlplane.accounts.services import token_create
from controlplane.jobs.models import ClusterVersion, Command, Event, Job, Node, Run, Worker
from controlplane.jobs.selectors import commands_unfinished_for_node
from controlplane.jobs.services.commands import command_issue
from controlplane.jobs.services.jobs import job_cancel, job_restart
from controlplane.jobs.services.membership import workers_register
from controlplane.jobs.services.reports import job_report, job_worker_report
from controlplane.jobs.services.scheduling import job_place
from controlplane.metrics.models import MetricPoint
from tests.controlplane.jobs.agent_steps import fail as _fail
from tests.controlplane.jobs.agent_steps import new_job as _job
from tests.controlplane.jobs.agent_steps import start as _start
from tests.controlplane.metric_points import run_of

pytestmark = pytest.mark.django_db


def _checkpoint(job: Job, step: int) -> None:
    MetricPoint.objects.create(
        job=job, run=run_of(job), name="checkpoint_step", step=step, value=step, time=timezone.now()
    )


def test_the_first_placement_makes_run_1_and_everything_placed_belongs_to_it(user, nodes):
    job = _job(user)
    assert job.current_run is None and not Run.objects.exists()
    job = _start(job)
    run = job.current_run
    assert (run.number, run.status, run.created_by) == (1, "running", "scheduler")
    assert run.resumed_from == "" and run.resume_note == "trains from scratch"
    assert set(Worker.objects.filter(job=job).values_list("run_id", flat=True)) == {run.id}
    assert set(Command.objects.filter(job=job).values_list("run_id", flat=True)) == {run.id}
    assert ClusterVersion.objects.get(job=job).run_id == run.id
    assert (run.cluster_version, run.workers_min_seen, run.workers_max_seen) == (1, 2, 2)
    assert (
        "run 1: placed 2 worker(s)"
        in Event.objects.filter(job=job, data__status="scheduling").get().message
    )


def test_a_job_created_with_resume_from_records_it_on_run_1(user, nodes):
    job = _start(_job(user, resume_from="/ckpt/step-000000100"))
    assert job.current_run.resumed_from == "/ckpt/step-000000100"
    assert "hyper-parameter resume_from" in job.current_run.resume_note


def test_status_changes_of_the_job_are_mirrored_onto_its_current_run(user, nodes):
    job = _job(user)
    assert job_place(job_id=job.id)
    run = Run.objects.get(job=job)
    assert run.status == "scheduling" and run.started_at is None
    node = Worker.objects.filter(run=run).first().node
    assert set(Worker.objects.filter(run=run).values_list("node_id", flat=True)) == {
        node.id
    }  # best fit
    workers_register(
        node=node, job_id=job.id, workers=[{"rank": 0, "port": 7000}, {"rank": 1, "port": 7001}]
    )
    job_report(node=node, job_id=job.id, status="running")
    run.refresh_from_db()
    job.refresh_from_db()
    assert run.status == "running" and run.started_at == job.started_at is not None
    Job.objects.filter(id=job.id).update(last_step=420)
    job_report(node=node, job_id=job.id, status="failed", reason="worker 1 ran out of memory")
    run.refresh_from_db()
    job.refresh_from_db()
    assert (run.status, run.status_reason, run.last_step) == (
        "failed",
        "worker 1 ran out of memory",
        420,
    )
    assert run.finished_at == job.finished_at is not None


def test_an_elastic_run_counts_the_fewest_and_most_workers_it_saw(user, nodes):
    job = _start(_job(user, initial=2, low=1, high=4))
    command_issue(job=job, type="scale_workers", value=1, issued_by="user:alice")
    run = Run.objects.get(job=job)
    assert (run.cluster_version, run.workers_min_seen, run.workers_max_seen) == (2, 1, 2)


def test_restart_resumes_a_failed_job_from_its_latest_checkpoint_and_places_it_again(
    api, user, nodes
):
    job = _start(_job(user, checkpoint_dir="/data/ckpt", checkpoint_every=100))
    _checkpoint(job, 100)
    _checkpoint(job, 200)
    Job.objects.filter(id=job.id).update(
        last_step=250, batch_size=64, policy_state={"r": {"streak": 2}}
    )
    job = _fail(job)

    response = api.post(f"/api/v1/jobs/{job.id}/restart/", {"reason": "node flaked"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["number"] == 2 and body["status"] == "pending"
    assert body["resumed_from"] == "/data/ckpt/step-000000200" and body["resumed_from_step"] == 200
    assert body["created_by"] == "user:alice" and body["reason"] == "node flaked"
    assert "latest checkpoint (step 200)" in body["resume_note"]

    job.refresh_from_db()
    assert job.status == "pending" and job.current_run.number == 2
    assert (job.cluster_version, job.workers_current, job.last_step, job.policy_state) == (
        0,
        0,
        0,
        {},
    )
    assert job.batch_size == 64  # resumed: the workers restore the checkpoint's own values
    assert job.finished_at is None
    assert Run.objects.get(job=job, number=1).status == "failed"  # run 1 stays as it ended
    restart = Event.objects.get(job=job, data__event="restart")
    assert restart.actor == "user:alice" and "node flaked" in restart.message
    assert (
        restart.data["previous_run"] == 1
        and restart.data["resumed_from"] == "/data/ckpt/step-000000200"
    )

    # Placed again as run 2: worker numbers and cluster versions start over.
    job = _start(job)
    run2 = job.current_run
    assert (run2.number, run2.status, job.cluster_version) == (2, "running", 1)
    assert sorted(Worker.objects.filter(run=run2).values_list("rank", flat=True)) == [0, 1]
    assert Worker.objects.filter(job=job).count() == 4
    start = Command.objects.filter(run=run2, type="start").first()
    assert start.payload["hyperparameters"]["resume_from"] == "/data/ckpt/step-000000200"
    assert [w["rank"] for w in api.get(f"/api/v1/jobs/{job.id}/").json()["workers"]] == [0, 1]


def test_restart_without_a_known_checkpoint_starts_from_scratch_and_says_so(api, user, nodes):
    job = _job(user)
    job = _start(job)
    Job.objects.filter(id=job.id).update(batch_size=128, learning_rate=0.4)
    job_cancel(job=job, actor="user:alice")
    body = api.post(f"/api/v1/jobs/{job.id}/restart/", {}, format="json").json()
    assert body["resumed_from"] is None and body["resumed_from_step"] is None
    assert body["resume_note"].startswith("trains from scratch: the job has recorded no checkpoint")
    assert "checkpoint_dir" in body["resume_note"]
    job.refresh_from_db()
    assert (job.batch_size, job.learning_rate) == (
        32,
        0.1,
    )  # from scratch: the job's hyper-parameters
    job = _start(job)
    start = Command.objects.get(run=job.current_run, type="start")
    assert "resume_from" not in start.payload["hyperparameters"]


def test_restart_from_scratch_takes_the_specs_strategy_not_one_a_policy_switched_to(
    api, user, nodes
):
    job = _start(_job(user))
    assert (job.strategy, job.topology) == ("ssgd", "ring")
    # What an applied set_strategy / set_topology (a policy's, or a user's) leaves behind.
    Job.objects.filter(id=job.id).update(strategy="sma", topology="tree")
    job_cancel(job=job, actor="user:alice")
    api.post(f"/api/v1/jobs/{job.id}/restart/", {"resume_from": None}, format="json")
    job.refresh_from_db()
    assert (job.strategy, job.topology) == ("ssgd", "ring")
    job = _start(job)
    start = Command.objects.get(run=job.current_run, type="start")
    assert (start.payload["strategy"], start.payload["topology"]) == ("ssgd", "ring")


def test_restart_takes_the_checkpoint_asked_for_or_none(api, user, nodes):
    job = _fail(_start(_job(user, checkpoint_dir="/data/ckpt")))
    _checkpoint(job, 300)
    asked = api.post(
        f"/api/v1/jobs/{job.id}/restart/", {"resume_from": "/elsewhere/step-7"}, format="json"
    )
    assert asked.status_code == 201
    assert (
        asked.json()["resumed_from"] == "/elsewhere/step-7"
        and asked.json()["resumed_from_step"] is None
    )
    job_cancel(job=job, actor="user:alice")
    scratch = api.post(
        f"/api/v1/jobs/{job.id}/restart/", {"resume_from": None}, format="json"
    ).json()
    assert scratch["number"] == 3 and scratch["resumed_from"] is None
    assert "as asked" in scratch["resume_note"]


def test_restarting_a_job_that_is_not_finished_is_a_409_in_the_error_shape(api, user, nodes):
    job = _start(_job(user))
    response = api.post(f"/api/v1/jobs/{job.id}/restart/", {}, format="json")
    assert response.status_code == 409
    body = response.json()
    assert set(body) == {"code", "message", "details"} and body["code"] == "conflict"
    assert "is running" in body["message"] and body["details"] == {"status": "running"}
    assert Run.objects.filter(job=job).count() == 1
    pending = _job(user)
    assert api.post(f"/api/v1/jobs/{pending.id}/restart/", {}, format="json").status_code == 409


def test_someone_elses_job_cannot_be_restarted_or_its_runs_read_but_staff_may(
    api, other_api, other_user, user, nodes
):
    job = _fail(_start(_job(user)))
    for response in (
        other_api.post(f"/api/v1/jobs/{job.id}/restart/", {}, format="json"),
        other_api.get(f"/api/v1/jobs/{job.id}/runs/"),
    ):
        assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert Run.objects.filter(job=job).count() == 1
    other_user.is_staff = True
    other_user.save()
    staff = APIClient()
    staff.credentials(HTTP_AUTHORIZATION=f"Token {token_create(user=other_user, name='staff')[1]}")
    response = staff.post(f"/api/v1/jobs/{job.id}/restart/", {}, format="json")
    assert response.status_code == 201 and response.json()["created_by"] == "user:bob"


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"resume_from": 7}, "resume_from: must be a string"),
        ({"resume_from": True}, "resume_from: must be a string"),
        ({"resume_from": {"path": "/x"}}, "got an object"),
        ({"resume_from": ""}, "resume_from"),
        ({"resume_from": "x" * 501}, "resume_from"),
        ({"reason": ["why"]}, "reason"),
    ],
)
def test_bad_restart_input_is_a_400_that_says_what_to_fix(api, user, nodes, bad, fragment):
    job = _fail(_start(_job(user)))
    response = api.post(f"/api/v1/jobs/{job.id}/restart/", bad, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["code"] == "invalid" and fragment in response.json()["message"]
    assert (
        Job.objects.get(id=job.id).status == "failed" and Run.objects.filter(job=job).count() == 1
    )


def test_runs_are_listed_newest_first_paginated_and_the_job_shows_its_current_run(api, user, nodes):
    job = _job(user)
    assert api.get(f"/api/v1/jobs/{job.id}/").json()["current_run"] is None
    assert api.get(f"/api/v1/jobs/{job.id}/runs/").json()["count"] == 0
    job = _fail(_start(job))
    api.post(f"/api/v1/jobs/{job.id}/restart/", {}, format="json")
    page = api.get(f"/api/v1/jobs/{job.id}/runs/").json()
    assert page["count"] == 2
    assert [(r["number"], r["status"]) for r in page["results"]] == [(2, "pending"), (1, "failed")]
    assert page["results"][1]["status_reason"] == "worker 0 exited with code 1"
    assert page["results"][1]["finished_at"] is not None
    one = api.get(f"/api/v1/jobs/{job.id}/runs/?limit=1&offset=1").json()
    assert [r["number"] for r in one["results"]] == [1] and one["previous"] is not None
    current = api.get(f"/api/v1/jobs/{job.id}/").json()["current_run"]
    assert current == {"number": 2, "status": "pending", "started_at": None, "finished_at": None}


def test_a_report_from_the_earlier_run_does_not_touch_the_restarted_one(user, nodes):
    job = _start(_job(user, initial=2))
    old_node = Worker.objects.get(job=job, rank=0).node
    job_cancel(job=job, actor="user:alice")  # the agent has not stopped the workers yet
    job_restart(job=job, actor="user:alice")
    # The node still runs run 1's workers, so run 2 goes to the other node.
    assert job_place(job_id=job.id)
    job.refresh_from_db()
    assert set(Worker.objects.filter(run=job.current_run).values_list("node_id", flat=True)) != {
        old_node.id
    }
    assert old_node.id not in set(
        Worker.objects.filter(run=job.current_run).values_list("node_id", flat=True)
    )
    # Run 1's agent now reports its workers failed (they were stopped); run 2 goes on.
    job_report(node=old_node, job_id=job.id, status="failed", reason="terminated")
    job_worker_report(node=old_node, job_id=job.id, rank=1, event=ExitedEvent(code=-15, error=""))
    job.refresh_from_db()
    assert job.status == "scheduling" and job.current_run.status == "scheduling"
    assert not Worker.objects.filter(job=job, node=old_node, state__in=Worker.ACTIVE).exists()


def test_a_restarted_job_waits_while_every_fitting_node_still_runs_the_earlier_run(user, nodes):
    job = _start(_job(user, initial=2))
    held = {w.node for w in Worker.objects.filter(job=job)}
    Node.objects.exclude(id__in=[n.id for n in held]).update(status="offline")
    job_cancel(job=job, actor="user:alice")
    job_restart(job=job, actor="user:alice")
    assert not job_place(job_id=job.id)
    job.refresh_from_db()
    assert job.status == "pending" and "still run(s) workers of an earlier run" in job.status_reason
    for node in held:
        job_report(node=node, job_id=job.id, status="stopped")
    assert job_place(job_id=job.id)


def test_start_commands_of_an_earlier_run_are_not_delivered_after_a_restart(user, nodes):
    job = _job(user)
    assert job_place(job_id=job.id)
    start = Command.objects.get(job=job, type="start")
    job_cancel(job=job, actor="user:alice")
    job_restart(job=Job.objects.get(id=job.id), actor="user:alice")
    start.refresh_from_db()
    assert start.state == "expired" and "run 2 replaces it" in start.error
    assert job_place(job_id=job.id)
    new_start = Command.objects.get(job=job, type="start", state="pending")
    assert commands_unfinished_for_node(new_start.node) == [new_start]


def test_idempotency_keys_are_per_run(user, nodes):
    job = _start(_job(user))
    first = command_issue(
        job=job, type="set_lr", value=0.2, issued_by="policy:p/r", idempotency_key="policy-1-r-0"
    )
    job = _fail(job)
    job_restart(job=job, actor="user:alice")
    job = _start(Job.objects.get(id=job.id))
    again = command_issue(
        job=job, type="set_lr", value=0.2, issued_by="policy:p/r", idempotency_key="policy-1-r-0"
    )
    assert again[0].id != first[0].id and again[0].run_id == job.current_run_id


def test_the_job_page_has_the_runs_table_and_offers_restart_only_for_a_finished_job(
    client, user, nodes
):
    client.force_login(user)
    job = _start(_job(user))
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="runs"' in page and '<form id="restart" class="row wrap" hidden>' in page
    job = _fail(job)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert '<form id="restart" class="row wrap" >' in page
