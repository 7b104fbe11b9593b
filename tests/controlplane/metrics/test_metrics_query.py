"""GET /api/v1/jobs/{id}/metrics/: the downsampling method is chosen per request."""

from datetime import UTC, datetime

import pytest

from controlplane.jobs.services.jobs import job_create
from controlplane.metrics.models import MetricPoint
from tests.controlplane.metric_points import run_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def job_with_loss(user):
    job = job_create(
        owner=user,
        name="j",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 32, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
    )
    now = datetime.now(UTC)
    values = [1.0] * 2000
    values[1234] = 50.0
    run = run_of(job)
    MetricPoint.objects.bulk_create(
        MetricPoint(job=job, run=run, name="loss", rank=None, step=s, value=v, time=now)
        for s, v in enumerate(values)
    )
    return job


def loss_series(api, job, query=""):
    response = api.get(f"/api/v1/jobs/{job.id}/metrics/?names=loss&max_points=40{query}")
    assert response.status_code == 200, response.json()
    [series] = response.json()["series"]
    return series


def test_lttb_returns_exactly_max_points_with_the_spike_and_both_ends(api, job_with_loss):
    series = loss_series(api, job_with_loss, "&downsample=lttb")
    assert series["points"] == 2000
    assert len(series["step"]) == len(series["value"]) == len(series["time"]) == 40
    assert series["step"][0] == 0 and series["step"][-1] == 1999
    assert 1234 in series["step"] and 50.0 in series["value"]


def test_default_is_still_min_max(api, job_with_loss):
    default = loss_series(api, job_with_loss)
    assert default == loss_series(api, job_with_loss, "&downsample=minmax")
    assert default != loss_series(api, job_with_loss, "&downsample=lttb")
    assert len(default["step"]) <= 40 and 1234 in default["step"]


def test_unknown_method_is_a_400_in_the_error_shape(api, job_with_loss):
    response = api.get(f"/api/v1/jobs/{job_with_loss.id}/metrics/?downsample=average")
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == "invalid"
    assert "downsample must be one of minmax, lttb" in body["message"]
    assert body["details"]["allowed"] == ["minmax", "lttb"]


def test_the_schema_documents_the_option(client):
    schema = client.get("/api/schema/?format=json").json()
    parameters = schema["paths"]["/api/v1/jobs/{job_id}/metrics/"]["get"]["parameters"]
    [downsample] = [p for p in parameters if p["name"] == "downsample"]
    assert sorted(downsample["schema"]["enum"]) == ["lttb", "minmax"]
    assert downsample["schema"]["default"] == "minmax"
