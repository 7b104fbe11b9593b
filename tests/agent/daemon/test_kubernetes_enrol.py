"""The agent DaemonSet's init step (``adaptrain-agent enrol-kubernetes``) run as a real
process against a real control plane (pytest-django's live server) and a stand-in for the
Kubernetes API (outside our system): an HTTPS server with its own CA that serves the
namespaced Secrets the step reads, creates and replaces, and checks the bearer token.

The first run enrols the node and creates its Secret; a second run (a restarted pod)
reuses it without a join token use — proved with a single-use token; a used-up or expired
token, and a revoked node, stop the step with a message saying what to do; both races (a
Secret written, or the node enrolled, by another pod meanwhile) end with one working
credential."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.utils import timezone

from controlplane.jobs.models import JoinToken, Node
from controlplane.jobs.services.nodes import (
    join_token_create,
    node_authenticate,
    node_delete,
    node_enrol,
    node_revoke,
)

pytestmark = pytest.mark.django_db(transaction=True)

NAMESPACE = "adaptrain"
ACCOUNT_TOKEN = "stand-in-service-account-token"
SECRETS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets(?:/(?P<name>[^/]+))?$")


class KubernetesStandIn:
    """GET/POST/PUT of namespaced Secrets, as the Kubernetes API answers them (404, 409
    AlreadyExists, 409 Conflict on a stale resourceVersion, 401 without the token)."""

    def __init__(self, cert: Path, key: Path):
        self.secrets: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.version = 0
        self.hide_next_gets = 0  # answer 404 to this many GETs (read before a peer's write)
        self.before_create = None  # called before a POST is handled (a peer's write)
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _handle(self) -> None:
                stand_in.requests.append((self.command, self.path))
                if self.headers.get("Authorization") != f"Bearer {ACCOUNT_TOKEN}":
                    return self._reply(401, {"kind": "Status", "message": "Unauthorized"})
                match = SECRETS.match(self.path)
                if match is None:
                    return self._reply(404, {"kind": "Status", "message": "not found"})
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, reply = stand_in.handle(self.command, match["ns"], match["name"], body)
                self._reply(status, reply)

            do_GET = do_POST = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, method: str, ns: str, name: str | None, body: dict | None):
        if method == "POST" and self.before_create is not None:
            hook, self.before_create = self.before_create, None
            hook()
        with self.lock:
            if method == "GET" and name:
                if self.hide_next_gets > 0:
                    self.hide_next_gets -= 1
                    return 404, {"kind": "Status", "reason": "NotFound"}
                found = self.secrets.get((ns, name))
                return (200, found) if found else (404, {"kind": "Status", "reason": "NotFound"})
            if method == "POST" and name is None:
                key = (ns, body["metadata"]["name"])
                if key in self.secrets:
                    return 409, {"kind": "Status", "reason": "AlreadyExists", "message": "exists"}
                return 201, self._store(key, body)
            if method == "PUT" and name:
                current = self.secrets.get((ns, name))
                if current is None:
                    return 404, {"kind": "Status", "reason": "NotFound"}
                given = body["metadata"].get("resourceVersion")
                if given != current["metadata"]["resourceVersion"]:
                    return 409, {"kind": "Status", "reason": "Conflict", "message": "modified"}
                return 200, self._store((ns, name), body)
            return 405, {"kind": "Status", "reason": "MethodNotAllowed"}

    def _store(self, key: tuple[str, str], body: dict) -> dict:
        self.version += 1
        stored = json.loads(json.dumps(body))
        stored["metadata"]["namespace"] = key[0]
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.secrets[key] = stored
        return stored

    def put_secret(self, name: str, credential: str) -> None:
        data = {"credential": base64.b64encode(credential.encode()).decode()}
        with self.lock:
            self._store((NAMESPACE, name), {"metadata": {"name": name}, "data": data})

    def credential(self, name: str) -> str | None:
        secret = self.secrets.get((NAMESPACE, name))
        if secret is None:
            return None
        return base64.b64decode(secret["data"]["credential"]).decode()

    def calls(self, method: str) -> int:
        return sum(m == method for m, _ in self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kubernetes(tmp_path):
    """The stand-in API, and the service-account directory a pod of it would have."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    cert, key = tmp_path / "api.crt", tmp_path / "api.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=kubernetes", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    (account / "ca.crt").write_bytes(cert.read_bytes())  # self-signed: its own CA
    (account / "token").write_text(ACCOUNT_TOKEN)
    (account / "namespace").write_text(NAMESPACE)
    api = KubernetesStandIn(cert, key)
    api.account = account
    yield api
    api.close()


@pytest.fixture
def run_step(live_server, kubernetes, tmp_path):
    """Run the init step as the DaemonSet does, for node ``name``; returns the finished
    process and the credential file the agent container would read."""

    def run(name: str, join_token: str | None, **extra: str):
        credential_file = tmp_path / name / "run" / "credential"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "KUBERNETES_"))}
        env.update(
            KUBERNETES_SERVICE_HOST="127.0.0.1",
            KUBERNETES_SERVICE_PORT=str(kubernetes.port),
            ADAPTRAIN_SERVICE_ACCOUNT_DIR=str(kubernetes.account),
            AGENT_SERVER=live_server.url,
            AGENT_NAME=name,
            AGENT_ADDRESS="10.0.0.7",
            AGENT_GPUS="none",
            AGENT_SLOTS="2",
            AGENT_LABELS="kubernetes=true",
            AGENT_STATE_DIR=str(tmp_path / name / "state"),
            AGENT_CREDENTIAL_FILE=str(credential_file),
            **extra,
        )
        if join_token is not None:
            env["AGENT_JOIN_TOKEN"] = join_token
        done = subprocess.run(
            [sys.executable, "-m", "agent", "enrol-kubernetes"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done, credential_file

    return run


def uses_left(secret: str) -> int:
    return JoinToken.objects.get(prefix=secret[:12]).uses_left


def test_first_run_enrols_and_a_restart_reuses_the_secret_without_a_join_token_use(
    run_step, kubernetes
):
    _, token = join_token_create(label="fleet", uses=1)  # single use: a second use fails

    first, credential_file = run_step("gpu-node-1", token)
    assert first.returncode == 0, first.stderr
    assert "credential enrolled" in first.stdout
    stored = kubernetes.credential("adaptrain-node-gpu-node-1")
    assert stored and credential_file.read_text() == stored
    assert oct(credential_file.stat().st_mode & 0o777) == "0o600"
    node = node_authenticate(stored)
    assert (node.name, node.address, node.slots) == ("gpu-node-1", "10.0.0.7", 2)
    assert node.labels["kubernetes"] == "true"
    secret = kubernetes.secrets[(NAMESPACE, "adaptrain-node-gpu-node-1")]
    assert secret["metadata"]["annotations"]["adaptrain.io/node-id"] == str(node.id)
    assert uses_left(token) == 0

    # The pod restarts (its emptyDir is gone): the Secret's credential, no enrolment.
    credential_file.unlink()
    again, credential_file = run_step("gpu-node-1", token)
    assert again.returncode == 0, again.stderr
    assert "credential reused" in again.stdout
    assert credential_file.read_text() == stored
    assert Node.objects.enrolled().filter(name="gpu-node-1").count() == 1
    assert uses_left(token) == 0
    assert kubernetes.calls("POST") == 1 and kubernetes.calls("PUT") == 0

    # Even with the join-token Secret deleted (the env entry is optional), it starts.
    third, _ = run_step("gpu-node-1", None)
    assert third.returncode == 0, third.stderr


def test_a_used_up_or_expired_join_token_says_to_replace_the_join_token_secret(
    run_step, kubernetes
):
    _, token = join_token_create(label="fleet", uses=1)
    assert run_step("gpu-node-1", token)[0].returncode == 0

    used_up, credential_file = run_step("gpu-node-2", token)
    assert used_up.returncode == 1
    assert "is used up" in used_up.stderr
    assert "adaptrain join-tokens create --uses N" in used_up.stderr
    assert "adaptrain-join-token" in used_up.stderr
    assert not credential_file.exists()
    assert (NAMESPACE, "adaptrain-node-gpu-node-2") not in kubernetes.secrets

    _, expired = join_token_create(label="old", uses=5)
    JoinToken.objects.filter(prefix=expired[:12]).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    late, _ = run_step("gpu-node-2", expired)
    assert late.returncode == 1 and "expired" in late.stderr
    assert not Node.objects.filter(name="gpu-node-2").exists()

    missing, _ = run_step("gpu-node-2", None)
    assert missing.returncode == 1
    assert "AGENT_JOIN_TOKEN is empty" in missing.stderr


def test_a_revoked_node_is_not_enrolled_again_until_its_secret_is_deleted(run_step, kubernetes):
    _, token = join_token_create(label="fleet", uses=2)
    assert run_step("gpu-node-1", token)[0].returncode == 0
    revoked = node_authenticate(kubernetes.credential("adaptrain-node-gpu-node-1"))
    node_revoke(node_id=revoked.id, actor="admin")

    refused, credential_file = run_step("gpu-node-1", token)
    assert refused.returncode == 1
    assert "was revoked" in refused.stderr
    assert f"kubectl -n {NAMESPACE} delete secret adaptrain-node-gpu-node-1" in refused.stderr
    assert not credential_file.exists()
    assert uses_left(token) == 1  # no automatic re-enrolment

    # The documented recovery: delete the Secret, then the pod.
    del kubernetes.secrets[(NAMESPACE, "adaptrain-node-gpu-node-1")]
    back, credential_file = run_step("gpu-node-1", token)
    assert back.returncode == 0, back.stderr
    node = node_authenticate(credential_file.read_text())
    assert node.id != revoked.id and node.name == "gpu-node-1"
    assert uses_left(token) == 0


def test_a_credential_the_control_plane_forgot_is_replaced_by_a_new_enrolment(run_step, kubernetes):
    _, token = join_token_create(label="fleet", uses=2)
    assert run_step("gpu-node-1", token)[0].returncode == 0
    old = kubernetes.credential("adaptrain-node-gpu-node-1")
    node_delete(node_id=node_authenticate(old).id, actor="admin")

    again, credential_file = run_step("gpu-node-1", token)
    assert again.returncode == 0, again.stderr
    new = kubernetes.credential("adaptrain-node-gpu-node-1")
    assert new != old and credential_file.read_text() == new
    assert node_authenticate(new).name == "gpu-node-1"
    assert kubernetes.calls("PUT") == 1  # replaced with the resourceVersion it read


def test_a_secret_another_pod_created_meanwhile_is_read_again_and_replaced(run_step, kubernetes):
    _, token = join_token_create(label="fleet", uses=1)
    # Between the step's read and its create, another writer leaves a stale credential.
    kubernetes.before_create = lambda: kubernetes.put_secret(
        "adaptrain-node-gpu-node-1", "node_stale-credential"
    )
    done, credential_file = run_step("gpu-node-1", token)
    assert done.returncode == 0, done.stderr
    stored = kubernetes.credential("adaptrain-node-gpu-node-1")
    assert stored != "node_stale-credential" and credential_file.read_text() == stored
    assert node_authenticate(stored).name == "gpu-node-1"
    assert kubernetes.calls("POST") == 1 and kubernetes.calls("PUT") == 1


def test_a_node_another_pod_enrolled_meanwhile_uses_that_pods_secret(run_step, kubernetes):
    _, token = join_token_create(label="fleet", uses=2)
    # The other pod (a rollout's overlap) enrolled the node and stored its Secret just
    # after this step read it: this step's enrolment is refused (name taken).
    _, peer_credential = node_enrol(
        join_token=token, name="gpu-node-1", address="10.0.0.7", slots=2, labels={}
    )
    kubernetes.put_secret("adaptrain-node-gpu-node-1", peer_credential)
    kubernetes.hide_next_gets = 1

    done, credential_file = run_step("gpu-node-1", token)
    assert done.returncode == 0, done.stderr
    assert "credential peer" in done.stdout
    assert credential_file.read_text() == peer_credential
    assert uses_left(token) == 1  # the refused enrolment used none
    assert Node.objects.enrolled().filter(name="gpu-node-1").count() == 1


def test_without_the_right_to_read_secrets_it_names_the_rbac_it_needs(run_step, kubernetes):
    (kubernetes.account / "token").write_text("someone-else")
    done, _ = run_step("gpu-node-1", "join_x")
    assert done.returncode == 1
    assert "401" in done.stderr and "agent-rbac.yaml" in done.stderr


def test_the_agent_container_uses_the_handed_over_credential_and_never_enrols(
    run_step, kubernetes, live_server, tmp_path
):
    """The agent container's settings (no join token, AGENT_CREDENTIAL_FILE in the shared
    emptyDir): the agent checks the step's credential and goes on; a credential the control
    plane forgot stops it with what to do on Kubernetes, not a second enrolment."""
    from agent.daemon.agent import Agent, Refused
    from agent.daemon.config import load_config

    _, token = join_token_create(label="fleet", uses=2)
    done, credential_file = run_step("gpu-node-1", token)
    assert done.returncode == 0, done.stderr
    env = {
        "AGENT_SERVER": live_server.url,
        "AGENT_NAME": "gpu-node-1",
        "AGENT_ADDRESS": "10.0.0.7",
        "AGENT_GPUS": "none",
        "AGENT_STATE_DIR": str(tmp_path / "agent-state"),
        "AGENT_CREDENTIAL_FILE": str(credential_file),
    }
    config = load_config(env)
    assert config.credential_file == credential_file and config.join_token is None
    agent = Agent(config)
    assert asyncio.run(agent.ensure_credential()) is True
    assert agent.client.credential == credential_file.read_text()
    assert not (tmp_path / "agent-state" / "credential").exists()

    node_delete(node_id=node_authenticate(credential_file.read_text()).id, actor="admin")
    with pytest.raises(Refused, match="On Kubernetes .* delete the pod"):
        asyncio.run(Agent(config).ensure_credential())
    assert uses_left(token) == 1


def test_a_node_enrolled_without_a_secret_here_is_not_taken_over(live_server, kubernetes):
    """The Secret was deleted while the node is still enrolled (or another machine holds
    the name): the step does not take the node over and says what the admin does."""
    from agent.daemon.config import load_config
    from agent.daemon.kubernetes_enrol import EnrolError, KubernetesApi, KubernetesEnrolment

    _, token = join_token_create(label="fleet", uses=2)
    node_enrol(join_token=token, name="gpu-node-1", address="10.0.0.7", slots=2, labels={})
    config = load_config(
        {
            "AGENT_SERVER": live_server.url,
            "AGENT_NAME": "gpu-node-1",
            "AGENT_ADDRESS": "10.0.0.7",
            "AGENT_GPUS": "none",
            "AGENT_JOIN_TOKEN": token,
        }
    )
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(kubernetes.port)}
    api = KubernetesApi.in_cluster(env, kubernetes.account)
    step = KubernetesEnrolment(
        config, api, peer_secret_wait_s=1.0, sleep=lambda s: time.sleep(0.05)
    )
    with pytest.raises(EnrolError, match="revoke or delete node gpu-node-1 in adaptrain"):
        step.run()
    assert (NAMESPACE, "adaptrain-node-gpu-node-1") not in kubernetes.secrets
    assert uses_left(token) == 1
