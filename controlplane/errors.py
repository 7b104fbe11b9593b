"""One error tree for the control plane, rendered as ``{"code","message","details"}``.

Services raise :class:`ApiError` subclasses; the DRF exception handler below renders
them and DRF's own exceptions (validation, authentication, permission, 404) in the
same shape, so every 4xx a client sees says what to fix.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class ApiError(Exception):
    code = "error"
    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(
        self, message: str, *, details: dict[str, Any] | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if code is not None:  # a finer code than the class's, for clients that act on it
            self.code = code


class InvalidInput(ApiError):
    code = "invalid"


class NotFound(ApiError):
    code = "not_found"
    status_code = status.HTTP_404_NOT_FOUND


class Conflict(ApiError):
    code = "conflict"
    status_code = status.HTTP_409_CONFLICT


class Unprocessable(ApiError):
    """Well-formed but contradicting what was stored (an idempotency key reused for
    another request)."""

    code = "unprocessable"
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY


class Forbidden(ApiError):
    code = "forbidden"
    status_code = status.HTTP_403_FORBIDDEN


class PayloadTooLarge(ApiError):
    code = "payload_too_large"
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


class AuthenticationFailed(ApiError):
    code = "not_authenticated"
    status_code = status.HTTP_401_UNAUTHORIZED


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            inner = _first_message(value)
            return inner if key == "non_field_errors" else f"{key}: {inner}"
        return "Invalid input."
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else "Invalid input."
    return str(detail)


def exception_handler(exc: Exception, context: dict) -> Response | None:
    from controlplane.outage import RETRY_AFTER_S, is_outage

    if is_outage(exc):
        return Response(
            {
                "code": "unavailable",
                "message": "The control plane's database or broker is unreachable; retry shortly.",
                "details": {},
            },
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    if isinstance(exc, ApiError):
        return Response(
            {"code": exc.code, "message": exc.message, "details": exc.details},
            status=exc.status_code,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        body = {"code": "invalid", "message": _first_message(exc.detail), "details": exc.detail}
    else:
        detail = getattr(exc, "detail", None)
        code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
        body = {"code": str(code), "message": str(detail or exc), "details": {}}
    response.data = body
    return response


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
