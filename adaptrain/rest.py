"""The one REST client for the control plane's ``/api/v1/`` (standard library only).

The ``adaptrain`` command, the node agent and the development tooling (the demo, the
test stack, the benchmarks) all talk to the control plane through :class:`RestClient`:
JSON in and out, the credential in ``Authorization`` (``Token <secret>`` for a user's API
token, ``Node <credential>`` for an agent), and the control plane's error shape
``{"code", "message", "details"}`` turned into :class:`ApiError`.

Two ways to call: :meth:`RestClient.call` returns the decoded body and raises
:class:`ApiError` for an HTTP error (what a program wants), :meth:`RestClient.request`
returns ``(status, body)`` whatever the status (what a test asserting on a 4xx wants).
Both raise :class:`Unreachable` when no HTTP answer came at all.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

USER_SCHEME = "Token"
NODE_SCHEME = "Node"


class ApiError(Exception):
    """The control plane answered with an HTTP error status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str = "",
        details: Any = None,
        method: str = "",
        path: str = "",
    ):
        where = f"{method} {path} " if method else ""
        super().__init__(f"{where}failed ({status}): {message}")
        self.status = status
        self.message = message
        self.code = code
        self.details = details


class Unreachable(ConnectionError):
    """No HTTP answer: the server is down, the name does not resolve, or it timed out (an
    ``OSError``, so code that retries on network errors retries on this too)."""


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


@dataclass
class RestClient:
    """A control plane at ``server`` (``http://host:port``), with one credential."""

    server: str
    credential: str | None = None
    scheme: str = USER_SCHEME
    timeout_s: float = 30.0
    headers: dict[str, str] = field(default_factory=dict)
    # A 503 (database or broker outage) is retried, honouring Retry-After with a growing
    # backoff, for up to this many seconds in all; 0 returns the first 503 as is.
    unavailable_retry_s: float = 60.0

    def __post_init__(self) -> None:
        self.server = self.server.rstrip("/")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """``(status, decoded body)`` for any HTTP status; :class:`Unreachable` otherwise.
        ``body`` is sent as JSON; ``data`` (raw bytes, e.g. an archive) as ``content_type``;
        ``headers`` are added to this request only. A 503 is retried for up to
        ``unavailable_retry_s`` (Retry-After, then backoff)."""
        deadline = time.monotonic() + self.unavailable_retry_s
        backoff_s = 0.5
        while True:
            status, answer, retry_after = self._request_once(
                method, path, body, data=data, content_type=content_type, headers=headers
            )
            if status != 503:
                return status, answer
            wait_s = min(max(retry_after if retry_after is not None else backoff_s, 0.05), 30.0)
            if time.monotonic() + wait_s > deadline:
                return status, answer
            time.sleep(wait_s)
            backoff_s = min(backoff_s * 2, 10.0)

    def _request_once(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, float | None]:
        if data is None and body is not None:
            data = json.dumps(body).encode()
        status, raw, retry_after = self._send(method, path, data, content_type, headers=headers)
        return status, _decode(raw), retry_after

    def _send(
        self,
        method: str,
        path: str,
        data: bytes | None,
        content_type: str,
        limit: int = -1,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, float | None]:
        """``(status, body's bytes, Retry-After seconds)`` (at most ``limit`` + 1 of a
        successful reply's bytes)."""
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Content-Type", content_type)
        request.add_header("Accept", "application/json")
        if self.credential:
            request.add_header("Authorization", f"{self.scheme} {self.credential}")
        for name, value in {**self.headers, **(headers or {})}.items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, response.read(limit + 1 if limit >= 0 else -1), None
        except urllib.error.HTTPError as exc:
            retry_after: float | None = None
            try:
                retry_after = float(exc.headers.get("Retry-After", ""))
            except (TypeError, ValueError):
                retry_after = None
            return exc.code, exc.read(), retry_after
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach {self.server}: {reason}") from None

    def download(self, path: str, *, limit_bytes: int) -> bytes:
        """The raw body of ``GET path`` (an archive); :class:`ApiError` for an HTTP error or
        a body over ``limit_bytes``."""
        status, raw, _ = self._send("GET", path, None, "application/json", limit=limit_bytes)
        if status >= 400:
            self._raise(status, _decode(raw), "GET", path)
        if len(raw) > limit_bytes:
            raise ApiError(
                status, f"the reply is over {limit_bytes} bytes", method="GET", path=path
            )
        return raw

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The decoded body of a successful call; :class:`ApiError` for an HTTP error."""
        status, answer = self.request(
            method, path, body, data=data, content_type=content_type, headers=headers
        )
        if status >= 400:
            self._raise(status, answer, method, path)
        return answer

    @staticmethod
    def _raise(status: int, answer: Any, method: str, path: str) -> None:
        if isinstance(answer, dict):
            message = str(answer.get("message") or answer.get("detail") or answer)
            code, details = str(answer.get("code", "")), answer.get("details")
        else:
            message, code, details = (str(answer) if answer else "no details"), "", None
        raise ApiError(status, message, code=code, details=details, method=method, path=path)

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, {} if body is None else body)

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)
