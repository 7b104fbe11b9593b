"""GET /metrics: the control plane's state in Prometheus text, behind METRICS_TOKEN when set."""

import pytest

from controlplane.jobs.services.jobs import job_create
from controlplane.jobs.services.nodes import join_token_create, node_enrol

pytestmark = pytest.mark.django_db


def test_prometheus_metrics_report_jobs_nodes_commands_and_ingest(client, user):
    _, token = join_token_create()
    node_enrol(join_token=token, name="n1", address="h", slots=2, labels={})
    job_create(
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
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.content.decode()
    assert 'adaptrain_jobs{status="pending"} 1' in text
    assert 'adaptrain_nodes{status="online"} 1' in text
    assert "# TYPE adaptrain_command_latency_seconds summary" in text
    assert "adaptrain_ingest_points_per_second 0.0" in text


def test_metrics_token_is_enforced_when_configured(client, monkeypatch):
    monkeypatch.setenv("METRICS_TOKEN", "s3cret")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200
