"""WebSocket authentication for agents: the node credential from the Authorization header."""

from channels.db import database_sync_to_async

from controlplane.jobs.auth import credential_from_header
from controlplane.jobs.services.nodes import node_authenticate


class NodeCredentialMiddleware:
    """Put the authenticated node (or None) into ``scope["node"]``."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers") or [])
        credential = credential_from_header(headers.get(b"authorization", b"").decode("latin-1"))
        node = await database_sync_to_async(node_authenticate)(credential) if credential else None
        return await self.inner({**scope, "node": node}, receive, send)
