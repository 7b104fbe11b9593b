"""API tokens: shown once, stored hashed, listed without the secret, revocable, expiring."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.accounts.models import ApiToken

pytestmark = pytest.mark.django_db


def client_with(secret: str) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    return c


def test_created_token_works_and_only_its_digest_is_stored(api):
    reply = api.post("/api/v1/tokens/", {"name": "laptop", "expires_in_days": 30}, format="json")
    assert reply.status_code == 201
    secret = reply.json()["token"]
    stored = ApiToken.objects.get(id=reply.json()["id"])
    assert secret not in (stored.token_hash, stored.prefix) and secret.startswith(stored.prefix)
    assert client_with(secret).get("/api/v1/jobs/").status_code == 200
    listed = api.get("/api/v1/tokens/").json()
    assert any(t["name"] == "laptop" for t in listed)
    assert all("token" not in t for t in listed)


def test_revoked_token_is_refused_with_a_reason(api):
    reply = api.post("/api/v1/tokens/", {"name": "ci"}, format="json").json()
    assert api.delete(f"/api/v1/tokens/{reply['id']}/").json()["revoked_at"] is not None
    response = client_with(reply["token"]).get("/api/v1/jobs/")
    assert response.status_code == 401
    assert "was revoked" in response.json()["message"]


def test_expired_token_is_refused_with_a_reason(api):
    reply = api.post("/api/v1/tokens/", {"name": "old", "expires_in_days": 1}, format="json").json()
    ApiToken.objects.filter(id=reply["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client_with(reply["token"]).get("/api/v1/jobs/")
    assert response.status_code == 401
    assert "expired" in response.json()["message"]


def test_someone_elses_token_cannot_be_revoked(api, other_api):
    theirs = other_api.post("/api/v1/tokens/", {"name": "x"}, format="json").json()
    assert api.delete(f"/api/v1/tokens/{theirs['id']}/").status_code == 404
    assert ApiToken.objects.get(id=theirs["id"]).revoked_at is None


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "x", "expires_in_days": 0}])
def test_bad_token_requests_are_400(api, body):
    assert api.post("/api/v1/tokens/", body, format="json").status_code == 400


def test_malformed_authorization_header_is_401():
    assert client_with("a b").get("/api/v1/jobs/").status_code == 401
    assert client_with("nonsense").get("/api/v1/jobs/").status_code == 401
