"""ASGI entry point: Django for HTTP, Channels for the two WebSocket endpoints.

``/ws/jobs/{id}/`` streams a job's metrics, events and logs (a browser's session cookie
from an allowed Origin, or an API token offered as the subprotocol ``bearer.<token>``);
``/ws/agent/`` is an agent's command channel (node credential in the
``Authorization`` header).
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from controlplane.live.auth import JobStreamAuthMiddleware, NodeCredentialMiddleware  # noqa: E402
from controlplane.live.consumers import AgentCommandConsumer, JobStreamConsumer  # noqa: E402

websocket_routes = URLRouter(
    [
        path(
            "ws/jobs/<int:job_id>/",
            JobStreamAuthMiddleware(AuthMiddlewareStack(JobStreamConsumer.as_asgi())),
        ),
        # Agents are not browsers and send no Origin; they authenticate by credential.
        path("ws/agent/", NodeCredentialMiddleware(AgentCommandConsumer.as_asgi())),
    ]
)

application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_routes})
