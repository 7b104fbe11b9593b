"""Authentication by a user's API token: ``Authorization: Token <secret>``.

Expired and revoked tokens are refused with a message that says which, so a user
knows to make a new one.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions

from controlplane.accounts import credentials
from controlplane.accounts.models import ApiToken

KEYWORD = "Token"
# Recording every use would write on every request; once a minute is enough to audit.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def token_authenticate(secret: str) -> ApiToken:
    token = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=credentials.digest(secret))
        .first()
    )
    if token is None:
        raise exceptions.AuthenticationFailed("Unknown API token: create one at /api/v1/tokens/.")
    now = timezone.now()
    if token.revoked_at is not None:
        raise exceptions.AuthenticationFailed(
            f"API token {token.prefix}… was revoked on {token.revoked_at:%Y-%m-%d %H:%M} UTC; create a new one."
        )
    if token.expires_at is not None and token.expires_at <= now:
        raise exceptions.AuthenticationFailed(
            f"API token {token.prefix}… expired on {token.expires_at:%Y-%m-%d %H:%M} UTC; create a new one."
        )
    if not token.user.is_active:
        raise exceptions.AuthenticationFailed("The token's user is inactive.")
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(id=token.id).update(last_used_at=now)
    return token


class ApiTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        parts = request.META.get("HTTP_AUTHORIZATION", "").split()
        if not parts or parts[0] != KEYWORD:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(
                "Send 'Authorization: Token <secret>' with no spaces in the secret."
            )
        token = token_authenticate(parts[1])
        return token.user, token

    def authenticate_header(self, request):
        return KEYWORD
