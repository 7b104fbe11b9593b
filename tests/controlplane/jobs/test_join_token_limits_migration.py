"""Migrations jobs/0013–0015: join tokens made before use limits keep working once, within
24 hours when they had no expiry; a revoked one stays revoked; enrolled nodes keep their
credentials and names."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.accounts import credentials
from controlplane.jobs.models import JoinToken, Node
from tests.controlplane.jobs.conftest import as_node, enrol
from tests.controlplane.migrations import migrate, migrate_to_latest

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("jobs", "0012_api_tokens_to_accounts")]


def test_tokens_and_nodes_made_before_use_limits_are_kept():
    apps = migrate(BEFORE)
    try:
        OldToken = apps.get_model("jobs", "JoinToken")
        OldNode = apps.get_model("jobs", "Node")
        open_secret, revoked_secret = credentials.new_secret("join"), credentials.new_secret("join")
        OldToken.objects.create(label="open", token_hash=credentials.digest(open_secret))
        OldToken.objects.create(
            label="revoked", token_hash=credentials.digest(revoked_secret), revoked=True
        )
        node_credential = credentials.new_secret("node")
        OldNode.objects.create(
            name="old-node",
            address="10.0.0.1",
            status="online",
            credential_hash=credentials.digest(node_credential),
        )

        migrate_to_latest()
        open_token = JoinToken.objects.get(label="open")
        assert (open_token.uses_allowed, open_token.uses_left) == (1, 1)
        left = open_token.expires_at - timezone.now()
        assert timedelta(hours=23) < left <= timedelta(hours=24)
        assert JoinToken.objects.get(label="revoked").revoked_at is not None

        assert enrol(open_secret, "n1").status_code == 201
        assert enrol(open_secret, "n2").json()["code"] == "join_token_used_up"
        assert enrol(revoked_secret, "n3").json()["code"] == "join_token_revoked"
        beat = as_node(node_credential).post("/api/v1/agent/heartbeat/", {}, format="json")
        assert beat.status_code == 200
        assert enrol(open_secret, "old-node").status_code == 401  # used up, and taken anyway
        assert Node.objects.filter(name="old-node").count() == 1
    finally:
        migrate_to_latest()
