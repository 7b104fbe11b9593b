"""Schemathesis against /api/schema/: generated requests for every operation get no 5xx
and no response that breaks the documented schema (status codes, content types, bodies,
headers).

Runs in-process against the WSGI app inside the test transaction, authenticated as a
user with a token (agent endpoints also see a node credential).
"""

import secrets

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from controlplane.accounts.services import token_create
from controlplane.jobs.services.nodes import join_token_create, node_enrol

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())


@pytest.fixture
def keep_test_connection():
    """The WSGI handler closes DB connections after each request; inside a test
    transaction that would close the test's own (Django's test client does the same)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def auth_headers(django_user_model, keep_test_connection):
    user, _ = django_user_model.objects.get_or_create(username="fuzzer")
    _, secret = token_create(user=user, name="fuzz")
    return {"Authorization": f"Token {secret}"}


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_api_never_errors_and_matches_its_schema(case, auth_headers):
    headers = dict(auth_headers)
    if case.path.startswith("/api/v1/agent/") and case.path != "/api/v1/agent/enrol/":
        _, token = join_token_create()
        # A name of its own per example: examples share the test's database, and an
        # enrolled node's name cannot be taken again.
        _, credential = node_enrol(
            join_token=token,
            name=f"fuzz-node-{secrets.token_hex(4)}",
            address="127.0.0.1",
            slots=4,
            labels={},
        )
        headers["Authorization"] = f"Node {credential}"
    # Everything but the two "acceptance" checks: the API validates beyond what a JSON
    # schema can say (e.g. hyper-parameter ranges inside a JSON object, policy semantics),
    # so a schema-valid request may get a 400, and lenient query parsing (an unparsable
    # offset means 0) is not an error.
    case.call_and_validate(
        headers=headers, excluded_checks=[positive_data_acceptance, negative_data_rejection]
    )
