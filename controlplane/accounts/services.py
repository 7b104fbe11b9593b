"""Users' API tokens: create (the secret is returned once) and revoke.

Authentication lives in :mod:`controlplane.accounts.authentication`, which must stay
free of imports of DRF views (settings load it while DRF initialises).
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from controlplane.accounts import credentials
from controlplane.accounts.models import ApiToken
from controlplane.errors import NotFound


def token_create(*, user, name: str, expires_in_days: int | None = None) -> tuple[ApiToken, str]:
    secret = credentials.new_secret("tok")
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=secret[:12],
        token_hash=credentials.digest(secret),
        expires_at=timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    return token, secret


def token_revoke(*, user, token_id: int) -> ApiToken:
    token = ApiToken.objects.filter(id=token_id, user=user).first()
    if token is None:
        raise NotFound(f"Token {token_id} does not exist or is not yours.")
    ApiToken.objects.filter(id=token.id, revoked_at__isnull=True).update(revoked_at=timezone.now())
    token.refresh_from_db()
    return token


def tokens_revoke_named(*, user, name: str) -> int:
    return ApiToken.objects.filter(user=user, name=name, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
