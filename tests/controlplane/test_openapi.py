"""The OpenAPI schema and its docs page are served."""

import pytest
from django.core.management import call_command

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


@pytest.mark.parametrize("debug", [True, False])
def test_a_path_under_api_that_is_no_endpoint_is_a_json_404_with_debug_on_or_off(
    client, settings, debug
):
    settings.DEBUG = debug  # the demo and a development server run with DEBUG on
    response = client.get("/api/v1/no-such-thing/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "code": "not_found",
        "message": "No API endpoint at /api/v1/no-such-thing/.",
        "details": {},
    }
