"""The bootstrap stores and cluster specs: set/get/wait, HTTP status codes, clear errors.

InProcessStore and HttpStore against a real StoreServer over loopback HTTP
behave the same through the Store protocol; the server answers bad keys,
oversized values and unsupported methods with a 4xx that says what to fix;
waits time out naming the key; ClusterSpec round-trips through JSON and
refuses malformed specs; wait_for_spec returns the first spec new enough.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from agent.local import free_port
from agent.native.elastic import ClusterSpec, publish_spec, spec_key, wait_for_spec
from agent.native.store import (
    HttpStore,
    InProcessStore,
    Store,
    StoreError,
    StoreServer,
)


@pytest.fixture(scope="module")
def server() -> Iterator[StoreServer]:
    with StoreServer(max_value_bytes=1000) as running:
        yield running


@pytest.fixture(params=["in-process", "http"])
def store(request: pytest.FixtureRequest, server: StoreServer) -> Store:
    if request.param == "in-process":
        return InProcessStore()
    # A fresh key space per test: a path prefix the server treats as part of the key.
    return HttpStore(f"{server.url}/{request.node.name.replace('[', '-').replace(']', '')}")


def test_set_get_and_wait_agree_on_every_store(store: Store) -> None:
    assert isinstance(store, Store)
    assert store.get("a/b") is None
    store.set("a/b", b"\x00\xff value")
    assert store.get("a/b") == b"\x00\xff value"
    store.set("a/b", b"")
    assert store.get("a/b") == b""
    threading.Timer(0.1, store.set, args=("late", b"here")).start()
    assert store.wait("late", timeout_s=10) == b"here"
    assert store.wait("a/b", timeout_s=0) == b""


def test_wait_times_out_naming_the_key(store: Store) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="'never/set' was not set within 0.2 s"):
        store.wait("never/set", timeout_s=0.2)
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../up", "a/./b", "sp ace", "a?b", "x" * 300])
def test_bad_keys_are_refused_with_what_a_key_looks_like(store: Store, key: str) -> None:
    with pytest.raises(ValueError, match="store key"):
        store.set(key, b"1")


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_server_answers_4xx_that_say_what_to_fix(server: StoreServer) -> None:
    assert _http("PUT", f"{server.url}/k", b"v")[0] == 204
    assert _http("GET", f"{server.url}/k") == (200, b"v")
    status, body = _http("GET", f"{server.url}/missing")
    assert status == 404 and b"not set" in body
    status, body = _http("GET", f"{server.url}/a/../b")
    assert status == 400 and b"not valid" in body
    status, body = _http("PUT", f"{server.url}/big", b"x" * 1001)
    assert status == 413 and b"exceeds the limit of 1000" in body
    status, body = _http("POST", f"{server.url}/k", b"v")
    assert status == 405 and b"use GET or PUT" in body
    status, body = _http("DELETE", f"{server.url}/k")
    assert status == 405


def test_http_store_errors_name_the_url_and_status(server: StoreServer) -> None:
    store = HttpStore(server.url)
    with pytest.raises(StoreError, match=r"PUT .*/big failed with HTTP 413: a value of 1001 bytes"):
        store.set("big", b"x" * 1001)
    with pytest.raises(ValueError, match="exceeds"):
        store.set("huge", b"x" * ((1 << 20) + 1))  # refused before sending
    nobody = HttpStore(f"http://127.0.0.1:{free_port()}", request_timeout_s=2)
    with pytest.raises(StoreError, match="cannot reach the store at http://127.0.0.1:"):
        nobody.get("k")
    with pytest.raises(
        TimeoutError, match="'k' was not set within 0.1 s .last attempt: cannot reach"
    ):
        nobody.wait("k", timeout_s=0.1)
    with pytest.raises(ValueError, match="base_url"):
        HttpStore("127.0.0.1:80")


def test_http_store_sends_its_headers() -> None:
    seen: list[str | None] = []
    with StoreServer() as server:
        handler = server._server.RequestHandlerClass
        original = handler.do_GET

        def recording(self) -> None:  # type: ignore[no-untyped-def]
            seen.append(self.headers.get("Authorization"))
            original(self)

        handler.do_GET = recording  # type: ignore[method-assign]
        HttpStore(server.url, headers={"Authorization": "Bearer t0ken"}).get("k")
    assert seen == ["Bearer t0ken"]


def test_server_close_releases_the_port() -> None:
    port = free_port()
    with StoreServer(port=port) as first:
        HttpStore(first.url).set("k", b"1")
    with StoreServer(port=port) as second:
        assert second.url == first.url
        assert HttpStore(second.url).get("k") is None


def test_cluster_spec_round_trips_and_refuses_malformed_input() -> None:
    spec = ClusterSpec(3, ("10.0.0.1:41000", "[::1]:41001"))
    assert ClusterSpec.from_json(spec.to_json()) == spec
    assert ClusterSpec.from_json(spec.to_json().encode()) == spec
    assert spec.rank_of("[::1]:41001") == 1 and spec.rank_of("10.0.0.9:1") is None
    assert ClusterSpec(1, ["a:1"]).members == ("a:1",)  # type: ignore[arg-type]
    for bad, fragment in [
        ("not json", "must be JSON"),
        ("[]", "JSON object"),
        ('{"version": 1}', "exactly"),
        ('{"version": 1, "members": "a:1"}', "list"),
        ('{"version": -1, "members": ["a:1"]}', "version=-1"),
        ('{"version": "1", "members": ["a:1"]}', "must be an int"),
        ('{"version": 1, "members": []}', "at least one member"),
        ('{"version": 1, "members": ["a:1", "a:1"]}', "twice"),
        ('{"version": 1, "members": ["nohost"]}', "host:port"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            ClusterSpec.from_json(bad)


def test_wait_for_spec_returns_the_first_spec_new_enough() -> None:
    store = InProcessStore()
    with pytest.raises(TimeoutError, match="none was published"):
        wait_for_spec(store, min_version=1, timeout_s=0.05)
    publish_spec(store, ClusterSpec(1, ("a:1",)))
    assert store.get(spec_key(1)) == store.get("cluster/latest")
    with pytest.raises(TimeoutError, match="the latest is version 1"):
        wait_for_spec(store, min_version=2, timeout_s=0.05)
    threading.Timer(0.1, publish_spec, args=(store, ClusterSpec(2, ("a:1", "b:2")))).start()
    assert wait_for_spec(store, min_version=2, timeout_s=10) == ClusterSpec(2, ("a:1", "b:2"))
    assert wait_for_spec(store, min_version=0, timeout_s=0).version == 2
