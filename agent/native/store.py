"""Small key-value stores through which ranks find each other.

Bootstrap and elastic resizing need one shared place to read "who is in the
group at cluster version N" from (see :mod:`agent.native.elastic`). A
:class:`Store` is that place: ``set`` a key to bytes, ``get`` it, or ``wait``
until it exists. :class:`InProcessStore` serves threads of one process,
:class:`HttpStore` talks to any HTTP server that maps ``GET``/``PUT
{base_url}/{key}`` to reads and writes (404 = missing), and
:class:`StoreServer` is such a server from the standard library, for local
runs and tests. Keys are short paths of letters, digits and ``. _ ~ : -``
separated by ``/`` (``cluster/7``, ``done/7/10.0.0.2:41000``); values are
bytes, bounded in size.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Protocol, runtime_checkable

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "HttpStore",
    "InProcessStore",
    "Store",
    "StoreError",
    "StoreServer",
    "check_key",
]

MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 1 << 20
_SEGMENT = r"[A-Za-z0-9_~:-][A-Za-z0-9._~:-]*"
_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")


class StoreError(OSError):
    """The store could not be reached, or refused a request."""


@runtime_checkable
class Store(Protocol):
    """Where ranks publish and find small values by key."""

    def set(self, key: str, value: bytes) -> None:
        """Set ``key`` to ``value``, replacing what was there."""
        ...

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None if it was never set."""
        ...

    def wait(self, key: str, timeout_s: float) -> bytes:
        """The value of ``key`` once it is set; ``TimeoutError`` naming the key after ``timeout_s``."""
        ...


def check_key(key: object) -> str:
    """``key`` if it is a valid store key, else ``ValueError`` saying what a key looks like."""
    if not isinstance(key, str):
        raise ValueError(f"a store key must be a str, not {type(key).__name__}")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"store key {key[:40]!r}... is longer than {MAX_KEY_BYTES} bytes")
    if not _KEY.fullmatch(key):
        raise ValueError(
            f"store key {key!r} is not valid: use segments of letters, digits and . _ ~ : - "
            "separated by '/', not starting with '.' (e.g. 'cluster/7')"
        )
    return key


def _check_value(value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"a store value must be bytes, not {type(value).__name__}")
    data = bytes(value)
    if len(data) > MAX_VALUE_BYTES:
        raise ValueError(f"a store value of {len(data)} bytes exceeds {MAX_VALUE_BYTES} bytes")
    return data


def _check_wait_timeout(timeout_s: object) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s < 0:
        raise ValueError(f"timeout_s={timeout_s!r} is not valid: use a number of seconds >= 0")
    return float(timeout_s)


class InProcessStore:
    """A store for the threads of one process (tests, single-host tools)."""

    def __init__(self) -> None:
        self._values: dict[str, bytes] = {}
        self._changed = threading.Condition()

    def set(self, key: str, value: bytes) -> None:
        key, data = check_key(key), _check_value(value)
        with self._changed:
            self._values[key] = data
            self._changed.notify_all()

    def get(self, key: str) -> bytes | None:
        key = check_key(key)
        with self._changed:
            return self._values.get(key)

    def wait(self, key: str, timeout_s: float) -> bytes:
        key, timeout_s = check_key(key), _check_wait_timeout(timeout_s)
        with self._changed:
            if not self._changed.wait_for(lambda: key in self._values, timeout_s):
                raise TimeoutError(f"store key {key!r} was not set within {timeout_s:g} s")
            return self._values[key]


class HttpStore:
    """A store behind an HTTP server: ``GET``/``PUT {base_url}/{key}``, 404 when missing.

    ``headers`` go with every request (an ``Authorization`` token, say).
    ``wait`` polls with short sleeps; a store that is briefly unreachable
    while waiting is retried until the timeout, whose message then says so.
    Every other failure raises :class:`StoreError` with the URL, the HTTP
    status and the server's message.
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        *,
        request_timeout_s: float = 10.0,
        poll_interval_s: float = 0.05,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r} is not valid: use 'http://host:port[/prefix]'")
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers or {})
        self._request_timeout_s = request_timeout_s
        self._poll_interval_s = poll_interval_s

    def _url(self, key: str) -> str:
        return f"{self.base_url}/{check_key(key)}"

    def _send(self, method: str, key: str, body: bytes | None = None) -> bytes | None:
        url = self._url(key)
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self._request_timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            if method == "GET" and error.code == 404:
                return None
            detail = error.read(500).decode(errors="replace").strip()
            raise StoreError(
                f"store {method} {url} failed with HTTP {error.code}: {detail or error.reason}"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise StoreError(f"cannot reach the store at {url}: {reason}") from None

    def set(self, key: str, value: bytes) -> None:
        self._send("PUT", key, _check_value(value))

    def get(self, key: str) -> bytes | None:
        return self._send("GET", key)

    def wait(self, key: str, timeout_s: float) -> bytes:
        check_key(key)
        timeout_s = _check_wait_timeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        pause = min(0.005, self._poll_interval_s)
        last_error: StoreError | None = None
        while True:
            try:
                value = self.get(key)
                last_error = None
            except StoreError as error:
                value, last_error = None, error
            if value is not None:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                unreachable = f" (last attempt: {last_error})" if last_error else ""
                raise TimeoutError(
                    f"store key {key!r} was not set within {timeout_s:g} s{unreachable}"
                )
            time.sleep(min(pause, left))
            pause = min(pause * 2, self._poll_interval_s)


class _IPv6HTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class StoreServer:
    """A tiny threaded HTTP key-value server for :class:`HttpStore` (standard library only).

    In memory, no authentication: meant for local runs and tests (the control
    plane serves the cluster spec in production). ``PUT /key`` stores the
    body (204), ``GET /key`` returns it (404 when missing). A bad key is a
    400, a body without ``Content-Length`` a 411, an oversized body a 413,
    any other method a 405; each with a message saying what to fix.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, max_value_bytes: int = MAX_VALUE_BYTES
    ) -> None:
        values: dict[str, bytes] = {}
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, status: int, body: bytes = b"", *, close: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def _key(self) -> str | None:
                key = self.path.split("?", 1)[0].lstrip("/")
                try:
                    return check_key(key)
                except ValueError as error:
                    self._reply(400, str(error).encode(), close=True)
                    return None

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                key = self._key()
                if key is None:
                    return
                with lock:
                    value = values.get(key)
                if value is None:
                    self._reply(404, f"store key {key!r} is not set".encode())
                else:
                    self._reply(200, value)

            def do_PUT(self) -> None:  # noqa: N802
                key = self._key()
                if key is None:
                    return
                length_text = self.headers.get("Content-Length")
                if length_text is None or not length_text.isdigit():
                    self._reply(411, b"send the value with a Content-Length header", close=True)
                    return
                length = int(length_text)
                if length > max_value_bytes:
                    # Read what a client is still sending (within reason), so it
                    # sees the 413 rather than a connection reset.
                    if length <= 16 * max_value_bytes:
                        while length > 0:
                            chunk = self.rfile.read(min(length, 1 << 16))
                            if not chunk:
                                break
                            length -= len(chunk)
                    message = (
                        f"a value of {self.headers['Content-Length']} bytes exceeds "
                        f"the limit of {max_value_bytes}"
                    )
                    self._reply(413, message.encode(), close=True)
                    return
                value = self.rfile.read(length)
                with lock:
                    values[key] = value
                self._reply(204)

            def _not_allowed(self) -> None:
                self.send_response(405)
                self.send_header("Allow", "GET, PUT")
                body = f"{self.command} is not supported: use GET or PUT".encode()
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # tests and local runs do not want an access log on stderr

        server_class = _IPv6HTTPServer if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), Handler)
        self._server.daemon_threads = True
        bound_host, bound_port = self._server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
        self.url = f"http://{shown}:{bound_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="store-server", daemon=True
        )
        self._thread.start()
        self._closed = False

    def close(self) -> None:
        """Stop serving and release the port; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> StoreServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<StoreServer {self.url}{' closed' if self._closed else ''}>"
