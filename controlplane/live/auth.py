"""WebSocket authentication: for agents, the node credential from the Authorization
header; for the job stream, an API token offered as a subprotocol or a browser's session
cookie from an allowed Origin."""

from urllib.parse import urlparse

from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator
from rest_framework import exceptions

from controlplane.accounts.authentication import token_authenticate
from controlplane.errors import ApiError
from controlplane.jobs.auth import credential_from_header
from controlplane.jobs.services.nodes import node_authenticate


class NodeCredentialMiddleware:
    """Put the authenticated node (or None) into ``scope["node"]``, and the refusal of a
    credential that was sent (unknown, deleted, revoked) into ``scope["node_refusal"]``."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers") or [])
        credential = credential_from_header(headers.get(b"authorization", b"").decode("latin-1"))
        node, refusal = None, None
        if credential:
            try:
                node = await database_sync_to_async(node_authenticate)(credential)
            except ApiError as exc:
                refusal = exc
        return await self.inner({**scope, "node": node, "node_refusal": refusal}, receive, send)


# The job stream's subprotocols: a client offers ``adaptrain.v1`` (echoed back) and, to
# authenticate without a cookie, ``bearer.<API token>`` (never echoed, never in a URL).
SUBPROTOCOL = "adaptrain.v1"
BEARER_PREFIX = "bearer."

# Close codes of the job stream (the socket is accepted, then closed with one of these,
# so a client reads the code and the reason rather than a bare HTTP 403).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


class JobStreamAuthMiddleware:
    """Who opens ``/ws/jobs/{id}/``, put into the scope for the consumer:

    - an API token offered as the subprotocol ``bearer.<token>`` (CLIs, scripts): its user
      in ``scope["user"]``; no Origin check, since a browser never sends a token on its own;
    - otherwise the session cookie (wrap this middleware around ``AuthMiddlewareStack``),
      accepted only from an Origin in ALLOWED_HOSTS, so a page elsewhere cannot ride a
      logged-in browser's cookie.

    A refusal goes into ``scope["ws_refusal"]`` as ``(close code, reason)``."""

    def __init__(self, inner):
        self.inner = inner
        self.origins = AllowedHostsOriginValidator(None)

    async def __call__(self, scope, receive, send):
        offered = [p for p in scope.get("subprotocols") or [] if p.startswith(BEARER_PREFIX)]
        if offered:
            token = offered[0][len(BEARER_PREFIX) :]
            try:
                api_token = await database_sync_to_async(token_authenticate)(token)
            except exceptions.AuthenticationFailed as exc:
                scope = {**scope, "ws_refusal": (CLOSE_UNAUTHENTICATED, str(exc.detail))}
            else:
                scope = {**scope, "user": api_token.user, "ws_token": True}
            return await self.inner(scope, receive, send)
        origin = None
        for name, value in scope.get("headers") or []:
            if name == b"origin":
                origin = urlparse(value.decode("latin-1"))
        if not self.origins.valid_origin(origin):
            scope = {
                **scope,
                "ws_refusal": (
                    CLOSE_FORBIDDEN,
                    "A session cookie is accepted only from this site's own pages (Origin); "
                    "other clients offer an API token as the subprotocol bearer.<token>.",
                ),
            }
        return await self.inner(scope, receive, send)
