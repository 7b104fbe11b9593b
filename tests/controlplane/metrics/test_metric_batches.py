"""The agents' metric batches (POST /api/v1/agent/metrics/): validated whole, stored once
even when retried, stored exactly, and read back as columnar series."""

import time

import pytest

from controlplane.jobs.models import Job
from controlplane.jobs.services.jobs import job_create
from controlplane.metrics.models import MetricPoint

pytestmark = pytest.mark.django_db


def point(job, **kw):
    return {"job": job.id, "name": "loss", "step": 1, "value": 0.5, "time": time.time(), **kw}


def test_metric_batch_is_stored_once_even_when_retried(node_client, placed_job):
    body = {"batch_id": "b-1", "points": [point(placed_job, step=s) for s in range(5)]}
    first = node_client.post("/api/v1/agent/metrics/", body, format="json")
    again = node_client.post("/api/v1/agent/metrics/", body, format="json")
    assert first.json() == {"stored": 5} and again.json() == {"stored": 0}
    assert MetricPoint.objects.filter(job=placed_job).count() == 5
    assert Job.objects.get(id=placed_job.id).last_step == 4


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"value": "high"}, "value must be a finite number"),
        ({"step": -1}, "step must be an integer from 0"),
        ({"step": 2**70}, "step must be an integer from 0"),
        ({"time": 1e30}, "time must be a unix timestamp"),
        ({"name": ""}, "name must be a string"),
        ({"rank": -2}, "rank must be a non-negative integer"),
    ],
)
def test_invalid_point_rejects_the_whole_batch(node_client, placed_job, bad, fragment):
    body = {"batch_id": "b-2", "points": [point(placed_job), point(placed_job, **bad)]}
    response = node_client.post("/api/v1/agent/metrics/", body, format="json")
    assert response.status_code == 400
    assert "points[1]" in response.json()["message"] and fragment in response.json()["message"]
    assert MetricPoint.objects.count() == 0


def test_nan_in_a_batch_is_a_400(node_client, placed_job):
    raw = '{"batch_id": "b-nan", "points": [{"job": %d, "name": "loss", "step": 1, "value": NaN, "time": 1}]}'
    response = node_client.post(
        "/api/v1/agent/metrics/", raw % placed_job.id, content_type="application/json"
    )
    assert response.status_code == 400
    assert MetricPoint.objects.count() == 0


def test_oversized_batch_gets_413(node_client, placed_job, settings):
    settings.METRIC_BATCH_MAX_POINTS = 10
    body = {"batch_id": "b-3", "points": [point(placed_job, step=s) for s in range(11)]}
    response = node_client.post("/api/v1/agent/metrics/", body, format="json")
    assert response.status_code == 413
    assert "at most 10 points" in response.json()["message"]


def test_metrics_for_a_job_not_on_this_node_are_refused(node_client, user):
    job = job_create(
        owner=user,
        name="elsewhere",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 32, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
    )
    response = node_client.post(
        "/api/v1/agent/metrics/", {"batch_id": "b-4", "points": [point(job)]}, format="json"
    )
    assert response.status_code == 404


def test_metrics_query_returns_columnar_downsampled_series(api, node_client, placed_job):
    points = [point(placed_job, step=s, value=float(s)) for s in range(500)]
    node_client.post("/api/v1/agent/metrics/", {"batch_id": "b-5", "points": points}, format="json")
    body = api.get(f"/api/v1/jobs/{placed_job.id}/metrics/?names=loss&max_points=50").json()
    series = body["series"][0]
    assert series["name"] == "loss" and series["points"] == 500
    assert len(series["step"]) <= 50 and series["step"][-1] == 499
    assert api.get(f"/api/v1/jobs/{placed_job.id}/metrics/?max_points=1").status_code == 400


def test_metric_names_with_tabs_newlines_and_backslashes_are_stored_exactly(
    node_client, placed_job
):
    name = "odd\tname\\with\nbreaks ünïcode"
    body = {
        "batch_id": "b-odd",
        "points": [
            point(placed_job, name=name, rank=None, value=1.5),
            point(placed_job, name="x", rank=3, step=7),
        ],
    }
    assert node_client.post("/api/v1/agent/metrics/", body, format="json").status_code == 201
    stored = {(p.name, p.rank, p.step, p.value) for p in MetricPoint.objects.filter(job=placed_job)}
    assert stored == {(name, None, 1, 1.5), ("x", 3, 7, 0.5)}


def test_nul_in_a_metric_name_is_a_400(node_client, placed_job):
    body = {"batch_id": "b-nul", "points": [point(placed_job, name="a\x00b")]}
    assert node_client.post("/api/v1/agent/metrics/", body, format="json").status_code == 400
