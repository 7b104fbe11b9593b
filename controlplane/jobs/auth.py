"""Authentication of agents by their node credential (``Authorization: Node <credential>``),
and :class:`AgentApi`, the base of every agent endpoint (of this app and others)."""

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions, permissions
from rest_framework.views import APIView

from controlplane.errors import ApiError
from controlplane.jobs.models import Node
from controlplane.jobs.services.nodes import node_authenticate

SCHEME = "Node"


def credential_from_header(value: str) -> str | None:
    parts = value.split()
    if len(parts) == 2 and parts[0] == SCHEME:
        return parts[1]
    return None


class NodeCredentialAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        credential = credential_from_header(header)
        if credential is None:
            return None
        try:
            node = node_authenticate(credential)
        except ApiError as exc:  # unknown, deleted or revoked: the code says which
            raise exceptions.AuthenticationFailed(exc.message, code=exc.code) from None
        return AnonymousUser(), node

    def authenticate_header(self, request):
        return SCHEME


class IsNode(permissions.BasePermission):
    message = "This endpoint is for agents: send 'Authorization: Node <credential>'."

    def has_permission(self, request, view):
        return isinstance(request.auth, Node)


class AgentApi(APIView):
    """An endpoint for agents: authenticated by node credential; ``request.auth`` is the node."""

    authentication_classes = [NodeCredentialAuthentication]
    permission_classes = [IsNode]
