"""What every app's REST endpoints share: the error shape in the OpenAPI schema, the
``{"ok": true}`` reply, query-parameter parsing that answers a 400 naming the
parameter, and the shared vocabulary (``GET /api/v1/vocabulary/``). Apps import these
from here, never from another app's ``apis``."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from agent.protocol import vocabulary
from controlplane.errors import InvalidInput


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable error code, e.g. invalid, not_found.")
    message = serializers.CharField(help_text="What went wrong and what to fix.")
    details = serializers.JSONField(help_text="Structured details, e.g. the field or policy path.")


# The error responses every endpoint may give (see controlplane.errors), for extend_schema.
ERRORS = {400: ErrorSerializer, 401: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer}

# Endpoints that take a file: too big (413) or a body no parser accepts (415).
UPLOAD_ERRORS = {**ERRORS, 413: ErrorSerializer, 415: ErrorSerializer}

OK = inline_serializer("Ok", {"ok": serializers.BooleanField()})


def int_query_param(request, name: str, *, default=None, low=None, high=None):
    """An integer query parameter, or ``default`` when absent; a 400 naming the parameter
    when it is not an integer or out of bounds."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(
            f"{name} must be an integer; got {raw!r}.", details={name: raw}
        ) from None
    if (low is not None and value < low) or (high is not None and value > high):
        limits = (
            f"between {low} and {high}"
            if low is not None and high is not None
            else f"at least {low}"
            if low is not None
            else f"at most {high}"
        )
        raise InvalidInput(f"{name} must be {limits}; got {value}.", details={name: raw})
    return value


class VocabularyApi(APIView):
    """The words the API, policies and agents share (``agent.protocol.vocabulary``):
    strategies, topologies, actions with the kind of value each takes, lr-scaling rules,
    worker events and metric names, each with a description."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="vocabulary",
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
        summary="Strategies, topologies, actions, lr rules and metric names, with descriptions",
    )
    def get(self, request):
        return Response(vocabulary.vocabulary())
