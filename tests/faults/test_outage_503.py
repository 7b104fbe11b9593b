"""A request that fails because PostgreSQL is unreachable answers the JSON 503, not a 500.

The default connection is pointed at a port where no server listens (a real refused
connection, as when PostgreSQL is down), then restored.
"""

import socket

import pytest
from django.db import connection
from django.test import Client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def database_down(django_db_blocker):
    with django_db_blocker.unblock():
        saved = dict(connection.settings_dict)
        connection.close()
        connection.settings_dict["HOST"] = "127.0.0.1"
        connection.settings_dict["PORT"] = str(_free_port())
        try:
            yield
        finally:
            connection.close()
            connection.settings_dict.clear()
            connection.settings_dict.update(saved)


@pytest.mark.parametrize("path", ["/api/v1/jobs/", "/api/v1/nodes/", "/api/v1/jobs/8/"])
def test_api_answers_503_json_with_retry_after_while_the_database_is_down(database_down, path):
    response = Client(raise_request_exception=False).get(
        path, HTTP_AUTHORIZATION="Token not-checkable-while-down"
    )
    assert response.status_code == 503, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    assert int(response["Retry-After"]) > 0
    body = response.json()
    assert body["code"] == "unavailable"
    assert body["details"] == {}
    assert "retry" in body["message"]
