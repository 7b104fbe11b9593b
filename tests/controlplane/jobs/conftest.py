"""Fixtures of the node and join-token tests: a staff member's API client, and an
enrolment over the API as an agent makes it."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from controlplane.accounts.services import token_create


@pytest.fixture
def admin(django_user_model):
    return django_user_model.objects.create_user(
        username="root", password="root-password", is_staff=True
    )


@pytest.fixture
def staff_api(admin):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_create(user=admin, name='test')[1]}")
    return client


def enrol(token: str, name: str, **extra):
    """``POST /api/v1/agent/enrol/`` as an agent does; the response."""
    body = {"join_token": token, "name": name, "address": "10.0.0.9", "slots": 2, **extra}
    return APIClient().post("/api/v1/agent/enrol/", body, format="json")


def as_node(credential: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {credential}")
    return client
