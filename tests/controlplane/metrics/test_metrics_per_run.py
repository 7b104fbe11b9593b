"""Metric points belong to a run: a job restarted from scratch counts its steps from 0
again, and GET /api/v1/jobs/{id}/metrics/ shows one run at a time (the current one by
default, ?run=N for another), never the two mixed. Ingest files each batch under the run
its node reports for, and the live frames say which run they are of."""

from __future__ import annotations

import time

import pytest

from controlplane.jobs.models import Job, Worker
from controlplane.jobs.selectors import job_latest_checkpoint
from controlplane.jobs.services.jobs import job_cancel, job_restart
from controlplane.live import channels
from controlplane.metrics.models import MetricPoint
from controlplane.metrics.services import metrics_ingest
from tests.controlplane.jobs.agent_steps import fail as _fail
from tests.controlplane.jobs.agent_steps import new_job as _job
from tests.controlplane.jobs.agent_steps import start as _start

pytestmark = pytest.mark.django_db


def _report(job: Job, node, batch_id: str, values: dict[int, float], name: str = "loss") -> int:
    now = time.time()
    return metrics_ingest(
        node=node,
        batch_id=batch_id,
        points=[
            {"job": job.id, "name": name, "step": step, "value": value, "time": now + step}
            for step, value in values.items()
        ],
    )


def _node_of(job: Job):
    return Worker.objects.filter(run_id=job.current_run_id).select_related("node").first().node


def _restarted_from_scratch(job: Job) -> Job:
    job = _fail(job)
    job_restart(job=job, actor="user:alice", resume_from=None)
    return _start(Job.objects.get(id=job.id))


@pytest.fixture
def two_runs(user, nodes):
    """A job whose run 1 reported loss 1.0 at steps 0..9, restarted from scratch as run 2,
    which reported loss 2.0 at steps 0..4."""
    job = _start(_job(user, initial=1))
    _report(job, _node_of(job), "run1", {step: 1.0 for step in range(10)})
    job = _restarted_from_scratch(job)
    _report(job, _node_of(job), "run2", {step: 2.0 for step in range(5)})
    return Job.objects.get(id=job.id)


def _loss(api, job: Job, query: str = "") -> dict:
    response = api.get(f"/api/v1/jobs/{job.id}/metrics/?names=loss&per_rank=false{query}")
    assert response.status_code == 200, response.json()
    return response.json()


def test_ingest_files_points_under_the_jobs_current_run(two_runs):
    runs = {run.number: run.id for run in two_runs.runs.all()}
    by_run = {
        number: sorted(MetricPoint.objects.filter(run_id=run_id).values_list("step", flat=True))
        for number, run_id in runs.items()
    }
    assert by_run == {1: list(range(10)), 2: list(range(5))}
    assert two_runs.last_step == 4  # run 2's, not run 1's 9


def test_the_metrics_of_a_restarted_job_are_the_current_runs_by_default(api, two_runs):
    body = _loss(api, two_runs)
    assert body["run"] == 2 and body["job"] == two_runs.id
    [series] = body["series"]
    assert (
        series["step"] == [0, 1, 2, 3, 4]
        and set(series["value"]) == {2.0}
        and series["points"] == 5
    )


def test_an_earlier_run_is_read_with_the_run_parameter_and_only_its_points(api, two_runs):
    body = _loss(api, two_runs, "&run=1")
    assert body["run"] == 1
    [series] = body["series"]
    assert series["step"] == list(range(10)) and set(series["value"]) == {1.0}
    assert _loss(api, two_runs, "&run=2") == _loss(api, two_runs)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("abc", "run must be an integer; got 'abc'"),
        ("1.5", "run must be an integer; got '1.5'"),
        ("0", "run must be at least 1; got 0"),
        ("-2", "run must be at least 1; got -2"),
    ],
)
def test_a_run_that_is_not_a_positive_integer_is_a_400_naming_the_parameter(
    api, two_runs, raw, fragment
):
    response = api.get(f"/api/v1/jobs/{two_runs.id}/metrics/?run={raw}")
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"code", "message", "details"} and body["code"] == "invalid"
    assert fragment in body["message"] and body["details"] == {"run": raw}


def test_an_unknown_run_is_a_404_that_lists_the_runs_there_are(api, two_runs):
    response = api.get(f"/api/v1/jobs/{two_runs.id}/metrics/?run=3")
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == "not_found"
    assert body["message"] == f"Job {two_runs.id} has no run 3; its runs are 1, 2."
    assert body["details"] == {"run": 3, "runs": [1, 2]}


def test_a_job_never_placed_has_no_run_and_no_series(api, user):
    job = _job(user)
    body = _loss(api, job)
    assert body["run"] is None and body["series"] == []
    response = api.get(f"/api/v1/jobs/{job.id}/metrics/?run=1")
    assert response.status_code == 404
    assert (
        "has no runs yet" in response.json()["message"] and response.json()["details"]["runs"] == []
    )


def test_someone_elses_job_answers_404_whatever_the_run(other_api, two_runs):
    for query in ("", "?run=1", "?run=9"):
        response = other_api.get(f"/api/v1/jobs/{two_runs.id}/metrics/{query}")
        assert response.status_code == 404 and "is not yours" in response.json()["message"]


def test_a_straggler_of_the_earlier_run_reports_into_that_run_not_the_new_one(user, nodes):
    job = _start(_job(user, initial=1))
    old_node = _node_of(job)
    job_cancel(job=job, actor="user:alice")  # its agent has not stopped the worker yet
    job_restart(job=job, actor="user:alice", resume_from=None)
    job = _start(Job.objects.get(id=job.id))
    new_node = _node_of(job)
    assert new_node != old_node  # the old node still runs run 1
    _report(job, new_node, "new", {0: 2.0, 1: 2.0})
    _report(job, old_node, "late", {500: 1.0})  # run 1's last words
    job.refresh_from_db()
    assert sorted(
        MetricPoint.objects.filter(run=job.current_run).values_list("step", flat=True)
    ) == [0, 1]
    assert list(
        MetricPoint.objects.filter(run__number=1, job=job).values_list("step", flat=True)
    ) == [500]
    assert job.last_step == 1  # the straggler's step 500 is not run 2's progress


def test_live_metrics_frames_carry_the_run_number(user, nodes, django_capture_on_commit_callbacks):
    job = _start(_job(user, initial=1))
    _report(job, _node_of(job), "one", {0: 1.0})
    job = _restarted_from_scratch(job)
    with django_capture_on_commit_callbacks(execute=True):
        _report(job, _node_of(job), "two", {0: 2.0, 1: 2.0})
    frames, _ = channels.frames_after(job.id, 0)
    metrics = [f["data"] for f in frames if f["type"] == channels.FRAME_METRICS]
    assert metrics[-1]["run"] == 2
    assert metrics[-1]["series"][0]["step"] == [0, 1]


def test_the_latest_checkpoint_is_the_latest_runs_even_at_a_lower_step(user, nodes):
    job = _start(_job(user, initial=1, checkpoint_dir="/data/ckpt"))
    _report(job, _node_of(job), "c1", {300: 300.0}, name="checkpoint_step")
    job = _restarted_from_scratch(job)
    assert job_latest_checkpoint(job) == ("/data/ckpt/step-000000300", 300)
    _report(job, _node_of(job), "c2", {100: 100.0}, name="checkpoint_step")
    assert job_latest_checkpoint(job) == ("/data/ckpt/step-000000100", 100)
