"""GET /api/v1/jobs/{id}/metrics.csv: every point of a job, streamed as CSV."""

import csv
import io
from datetime import UTC, datetime

import pytest

from controlplane.jobs.models import Job, Run
from controlplane.metrics.models import MetricPoint

pytestmark = pytest.mark.django_db

SPEC = {
    "name": "csv",
    "entrypoint": "examples.digits",
    "hyperparameters": {"batch_size": 32, "lr": 0.05},
    "workers": {"initial": 1},
}
T = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def job_with_two_runs(api) -> Job:
    job = Job.objects.get(id=api.post("/api/v1/jobs/", SPEC, format="json").json()["id"])
    for number in (1, 2):
        run = Run.objects.create(job=job, number=number, created_by="scheduler")
        MetricPoint.objects.create(
            job=job, run=run, name="loss", rank=None, step=10, value=2.5 / number, time=T
        )
        MetricPoint.objects.create(
            job=job, run=run, name="batch_size", rank=1, step=10, value=32.0, time=T
        )
    return job


def read(response) -> list[list[str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_csv_has_every_point_of_every_run_with_the_columns(api):
    job = job_with_two_runs(api)
    response = api.get(f"/api/v1/jobs/{job.id}/metrics.csv")
    assert f"job-{job.id}-metrics.csv" in response["Content-Disposition"]
    assert read(response) == [
        ["run", "name", "rank", "step", "value", "time"],
        ["1", "batch_size", "1", "10", "32.0", "2026-01-02T03:04:05+00:00"],
        ["1", "loss", "", "10", "2.5", "2026-01-02T03:04:05+00:00"],
        ["2", "batch_size", "1", "10", "32.0", "2026-01-02T03:04:05+00:00"],
        ["2", "loss", "", "10", "1.25", "2026-01-02T03:04:05+00:00"],
    ]


def test_csv_filters_by_run_and_names_and_hides_other_peoples_jobs(api, other_api):
    job = job_with_two_runs(api)
    rows = read(api.get(f"/api/v1/jobs/{job.id}/metrics.csv?run=2&names=loss"))
    assert rows[1:] == [["2", "loss", "", "10", "1.25", "2026-01-02T03:04:05+00:00"]]
    assert api.get(f"/api/v1/jobs/{job.id}/metrics.csv?run=7").status_code == 404
    assert other_api.get(f"/api/v1/jobs/{job.id}/metrics.csv").status_code == 404
