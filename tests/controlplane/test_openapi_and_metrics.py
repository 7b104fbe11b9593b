"""The OpenAPI schema and its docs page are served; /metrics speaks Prometheus text."""

import pytest
from django.core.management import call_command

from controlplane.jobs import services

pytestmark = pytest.mark.django_db


def test_schema_is_valid_openapi_3_and_lists_the_contract_paths(client, tmp_path):
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    for path in (
        "/api/v1/jobs/",
        "/api/v1/jobs/{job_id}/",
        "/api/v1/jobs/{job_id}/metrics/",
        "/api/v1/jobs/{job_id}/commands/",
        "/api/v1/policies/validate/",
        "/api/v1/tokens/",
    ):
        assert path in schema["paths"], path
    # drf-spectacular's own validator (openapi-spec) must accept it, with no warnings.
    call_command(
        "spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml")
    )


def test_docs_page_loads_its_assets_locally(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger" in html.lower()
    assert "https://" not in html.replace("https://swagger.io", "")


def test_prometheus_metrics_report_jobs_nodes_commands_and_ingest(client, user):
    token = services.join_token_create()
    services.node_enrol(join_token=token, name="n1", address="h", slots=2, labels={})
    services.job_create(
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
