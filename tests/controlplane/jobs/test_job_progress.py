"""Each job in the list and detail carries its progress: step of total, fraction, ETA."""

import pytest
from django.utils import timezone

from controlplane.jobs.models import Job, Run
from controlplane.metrics.models import MetricPoint

pytestmark = pytest.mark.django_db

SPEC = {
    "name": "p",
    "entrypoint": "examples.digits",
    "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 1000},
    "workers": {"initial": 1},
}


def running_job(api, *, step: int, step_times: list[float]) -> Job:
    job = Job.objects.get(id=api.post("/api/v1/jobs/", SPEC, format="json").json()["id"])
    run = Run.objects.create(job=job, number=1, created_by="scheduler", status="running")
    Job.objects.filter(id=job.id).update(current_run=run, status="running", last_step=step)
    now = timezone.now()
    for i, value in enumerate(step_times):
        MetricPoint.objects.create(
            job=job, run=run, name="step_time", rank=None, step=(i + 1) * 10, value=value, time=now
        )
    # A per-rank step time must not count as the job's.
    MetricPoint.objects.create(
        job=job, run=run, name="step_time", rank=0, step=999, value=9.0, time=now
    )
    return job


def test_progress_gives_step_of_total_and_eta_from_the_latest_step_time(api):
    job = running_job(api, step=250, step_times=[0.5, 0.2])
    listed = api.get("/api/v1/jobs/").json()["results"][0]
    assert listed["progress"] == {"step": 250, "total": 1000, "fraction": 0.25, "eta_s": 150.0}
    detail = api.get(f"/api/v1/jobs/{job.id}/").json()
    assert detail["progress"] == listed["progress"]


def test_eta_is_null_without_step_times_and_for_a_finished_job(api):
    pending = api.post("/api/v1/jobs/", SPEC, format="json").json()
    assert pending["progress"] == {"step": 0, "total": 1000, "fraction": 0.0, "eta_s": None}
    job = running_job(api, step=1000, step_times=[0.1])
    Job.objects.filter(id=job.id).update(status="succeeded")
    done = api.get(f"/api/v1/jobs/{job.id}/").json()["progress"]
    assert done == {"step": 1000, "total": 1000, "fraction": 1.0, "eta_s": None}
