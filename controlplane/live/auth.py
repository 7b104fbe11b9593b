"""WebSocket authentication for agents: the node credential from the Authorization header."""

from channels.db import database_sync_to_async

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
