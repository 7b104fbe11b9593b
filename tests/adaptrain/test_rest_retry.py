"""The REST client (CLI and agent) retries a 503 honouring Retry-After, then gives up."""

import http.server
import json
import threading
import time

import pytest

from adaptrain.rest import RestClient


class _Flaky(http.server.BaseHTTPRequestHandler):
    unavailable_left = 0
    seen = 0

    def do_GET(self):  # noqa: N802
        type(self).seen += 1
        if type(self).unavailable_left > 0:
            type(self).unavailable_left -= 1
            body = json.dumps({"code": "unavailable", "message": "retry", "details": {}})
            self.send_response(503)
            self.send_header("Retry-After", "0.2")
        else:
            body = json.dumps({"ok": True})
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Flaky.seen = 0
    yield httpd
    httpd.shutdown()


def test_503s_are_retried_after_retry_after_until_the_server_answers(server):
    _Flaky.unavailable_left = 2
    client = RestClient(f"http://127.0.0.1:{server.server_port}", unavailable_retry_s=10)
    started = time.monotonic()
    assert client.get("/x") == {"ok": True}
    assert _Flaky.seen == 3
    assert time.monotonic() - started >= 0.4  # waited Retry-After twice


def test_a_lasting_outage_ends_in_the_503_after_the_retry_budget(server):
    _Flaky.unavailable_left = 1000
    client = RestClient(f"http://127.0.0.1:{server.server_port}", unavailable_retry_s=0.5)
    status, body = client.request("GET", "/x")
    assert status == 503 and body["code"] == "unavailable"
    assert 2 <= _Flaky.seen <= 4
