"""Database and broker outages answer 503 ``{"code": "unavailable", ...}`` with Retry-After.

A request that fails because PostgreSQL or Redis cannot be reached is not a bug in the
request: clients (the CLI, agents) should retry it. Django turns any exception raised
inside the middleware chain or a view into a 500 (or its HTML debug page) before an
outer middleware can see it, so the exception is noted from the ``got_request_exception``
signal and the outermost middleware swaps that 500 for the JSON 503.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.signals import got_request_exception
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

RETRY_AFTER_S = 5


def is_outage(exc: BaseException) -> bool:
    """True for errors meaning PostgreSQL or Redis is unreachable (not a bad query)."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    try:
        import redis.exceptions as redis_exc

        if isinstance(exc, (redis_exc.ConnectionError, redis_exc.TimeoutError)):
            return True
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    try:
        from kombu.exceptions import OperationalError as KombuOperationalError

        if isinstance(exc, KombuOperationalError):
            return True
    except ImportError:  # pragma: no cover
        pass
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc and not isinstance(exc, DatabaseError):
        return is_outage(cause)
    return False


def unavailable_response(exc: BaseException) -> JsonResponse:
    response = JsonResponse(
        {
            "code": "unavailable",
            "message": "The control plane's database or broker is unreachable; retry shortly.",
            "details": {},
        },
        status=503,
    )
    response["Retry-After"] = str(RETRY_AFTER_S)
    return response


def _note_exception(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    if request is None:
        return
    import sys

    exc = sys.exc_info()[1]
    if exc is not None and is_outage(exc):
        request._adaptrain_outage = exc  # type: ignore[attr-defined]


got_request_exception.connect(_note_exception, dispatch_uid="adaptrain-outage")


class OutageMiddleware:
    """Outermost middleware: a 500 caused by an outage becomes the documented 503."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            response = self.get_response(request)
        except Exception as exc:  # raised past Django's own conversion (tests, ASGI)
            if is_outage(exc):
                return unavailable_response(exc)
            raise
        exc = getattr(request, "_adaptrain_outage", None)
        if exc is not None and response.status_code >= 500:
            return unavailable_response(exc)
        return response

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if is_outage(exc):
            return unavailable_response(exc)
        return None
