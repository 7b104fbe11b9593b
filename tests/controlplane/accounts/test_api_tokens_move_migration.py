"""Migrations jobs/0012 and accounts/0001: API tokens move from the jobs app to accounts
with their table (jobs_apitoken) and rows; a token made before the move still
authenticates after it."""

import pytest
from rest_framework.test import APIClient

from controlplane.accounts import credentials
from tests.controlplane.migrations import migrate, migrate_to_latest

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("jobs", "0011_events_per_run")]
AFTER = [("accounts", "0001_initial")]


def test_tokens_made_before_the_move_are_kept_and_still_authenticate():
    apps = migrate(BEFORE)
    try:
        User = apps.get_model("auth", "User")
        ApiToken = apps.get_model("jobs", "ApiToken")
        owner = User.objects.create(username="old-timer", is_active=True)
        secret = credentials.new_secret("tok")
        ApiToken.objects.create(
            user=owner, name="before", prefix=secret[:12], token_hash=credentials.digest(secret)
        )

        apps = migrate(AFTER)
        ApiToken = apps.get_model("accounts", "ApiToken")
        assert ApiToken._meta.db_table == "jobs_apitoken"
        assert list(ApiToken.objects.values_list("name", "user__username")) == [
            ("before", "old-timer")
        ]
        migrate_to_latest()
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
        assert client.get("/api/v1/tokens/").json()[0]["name"] == "before"
    finally:
        migrate_to_latest()
