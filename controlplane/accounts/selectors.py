"""Read-only queries over API tokens."""

from __future__ import annotations

from django.db.models import QuerySet

from controlplane.accounts.models import ApiToken


def tokens_of(user) -> QuerySet[ApiToken]:
    """The user's API tokens, revoked and expired ones included, newest first."""
    return ApiToken.objects.filter(user=user)
