"""The init step of the agent's Kubernetes DaemonSet (``adaptrain-agent enrol-kubernetes``):
keep each node's credential in a Secret, enrolling the node with the fleet's join token
only when that Secret holds none.

It runs before the agent container, with the agent's own ``AGENT_*`` settings, and:

1. reads the Secret ``adaptrain-node-<AGENT_NAME>`` in its namespace through the in-cluster
   Kubernetes API (the pod's service-account token and CA, plain HTTPS from the standard
   library);
2. if it holds a credential the control plane accepts (a heartbeat), uses it: a restarted
   or re-created pod is the same node and uses no join token;
3. otherwise enrols the node with ``AGENT_JOIN_TOKEN`` (the admin's multi-use token for the
   fleet) and creates the Secret with the credential. A Secret created meanwhile by another
   pod of the node (``409``) is read again and its credential used when it works; a node
   enrolled meanwhile under the name (the control plane's ``node_name_taken``) makes it wait
   for that pod's Secret;
4. writes the credential to ``AGENT_CREDENTIAL_FILE`` (an in-memory ``emptyDir`` shared
   with the agent container, which has no join token and no Kubernetes token).

A credential the control plane no longer knows (its node was deleted, or the database is
another) is replaced by a new enrolment, as the agent does on bare metal. A *revoked*
node is not enrolled again on its own — the fleet's token would silently undo an admin's
revocation — the step fails saying how to recover: delete the Secret, then the pod.
docs/kubernetes.md walks an admin through it. ``ADAPTRAIN_SERVICE_ACCOUNT_DIR`` names
another service-account directory than the one Kubernetes mounts (the tests' stand-in).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from adaptrain.rest import ApiError
from agent.daemon.client import ControlPlaneClient
from agent.daemon.config import AgentConfig, ConfigError, load_config
from agent.protocol import rest as rest_errors

log = logging.getLogger("agent.kubernetes")

Json = dict[str, Any]  # a Kubernetes object, as the API sends and takes it
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SECRET_PREFIX = "adaptrain-node-"
SECRET_KEY = "credential"
# How long a step waits for the control plane to answer (it may be starting too), and for
# the Secret of another pod that enrolled the node a moment ago.
CONTROL_PLANE_WAIT_S = 300.0
PEER_SECRET_WAIT_S = 20.0


class EnrolError(RuntimeError):
    """The step cannot give the node a credential: the message says why and what to do."""


class KubernetesApiError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"Kubernetes API answered {status}: {message}")
        self.status = status


def secret_name(node_name: str) -> str:
    """The Secret holding node ``node_name``'s credential."""
    name = f"{SECRET_PREFIX}{node_name}".lower()
    if len(name) > 253:
        raise EnrolError(f"node name {node_name!r} is too long for a Secret name")
    return name


@dataclass(frozen=True)
class KubernetesApi:
    """The few Secret calls the step makes, on the in-cluster API (``/api/v1``)."""

    base_url: str  # https://host:port
    token: str
    namespace: str
    ssl_context: ssl.SSLContext
    timeout_s: float = 10.0

    @classmethod
    def in_cluster(
        cls, env: Mapping[str, str] | None = None, account_dir: Path | None = None
    ) -> KubernetesApi:
        """The API as a pod sees it: ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the mounted
        service account (token, ``ca.crt``, ``namespace``)."""
        env = os.environ if env is None else env
        account_dir = account_dir or Path(
            env.get("ADAPTRAIN_SERVICE_ACCOUNT_DIR") or SERVICE_ACCOUNT_DIR
        )
        host = env.get("KUBERNETES_SERVICE_HOST")
        port = env.get("KUBERNETES_SERVICE_PORT") or "443"
        if not host:
            raise EnrolError(
                "KUBERNETES_SERVICE_HOST is not set: enrol-kubernetes runs as the init step of "
                "the agent's DaemonSet (deploy/kubernetes); elsewhere start the agent with "
                "AGENT_JOIN_TOKEN (python -m agent)"
            )
        try:
            token = (account_dir / "token").read_text().strip()
            namespace = (account_dir / "namespace").read_text().strip()
            context = ssl.create_default_context(cafile=str(account_dir / "ca.crt"))
        except OSError as exc:
            raise EnrolError(
                f"cannot read the pod's service account in {account_dir} ({exc}): the init "
                f"container needs the adaptrain-agent ServiceAccount's token mounted there "
                f"(deploy/kubernetes/base/agent.yaml)"
            ) from None
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 service address
        return cls(f"https://{host}:{port}", token, namespace, context)

    def _secrets_url(self, name: str | None = None) -> str:
        url = f"{self.base_url}/api/v1/namespaces/{quote(self.namespace)}/secrets"
        return url if name is None else f"{url}/{quote(name)}"

    def _call(self, method: str, url: str, body: Json | None = None) -> Json:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout_s, context=self.ssl_context
            ) as reply:
                answer: Json = json.loads(reply.read() or b"{}")
                return answer
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw).get("message") or raw.decode(errors="replace")
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace")
            raise KubernetesApiError(exc.code, message) from None
        except OSError as exc:  # no HTTP answer: refused, unresolved, TLS, timed out
            reason = getattr(exc, "reason", exc)
            raise EnrolError(
                f"cannot reach the Kubernetes API at {self.base_url}: {reason}"
            ) from None

    def get_secret(self, name: str) -> Json | None:
        """The Secret, or None when there is none."""
        try:
            return self._call("GET", self._secrets_url(name))
        except KubernetesApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create_secret(self, secret: Json) -> Json:
        """Create the Secret; :class:`KubernetesApiError` 409 when it exists already."""
        return self._call("POST", self._secrets_url(), secret)

    def replace_secret(self, secret: Json) -> Json:
        """Replace the Secret; 409 when ``metadata.resourceVersion`` is not the latest."""
        return self._call("PUT", self._secrets_url(secret["metadata"]["name"]), secret)


def credential_of(secret: Json | None) -> str | None:
    if not secret:
        return None
    raw = (secret.get("data") or {}).get(SECRET_KEY)
    if not raw:
        return None
    try:
        return base64.b64decode(raw).decode().strip() or None
    except (ValueError, UnicodeDecodeError):
        return None


def secret_body(name: str, config: AgentConfig, credential: str, node_id: Any) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "adaptrain-agent",
                "app.kubernetes.io/component": "node-credential",
            },
            "annotations": {
                "adaptrain.io/node-name": config.name,
                "adaptrain.io/node-id": str(node_id),
                "adaptrain.io/control-plane": config.server,
            },
        },
        "data": {SECRET_KEY: base64.b64encode(credential.encode()).decode()},
    }


@dataclass
class Outcome:
    credential: str
    how: str  # "reused" (the Secret's), "enrolled" (a new enrolment), "peer" (another pod's)


class KubernetesEnrolment:
    """One run of the step (:meth:`run`); ``sleep`` and ``clock`` are the test's to speed."""

    def __init__(
        self,
        config: AgentConfig,
        api: KubernetesApi,
        *,
        control_plane_wait_s: float = CONTROL_PLANE_WAIT_S,
        peer_secret_wait_s: float = PEER_SECRET_WAIT_S,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.config = config
        self.api = api
        self.name = secret_name(config.name)
        self.where = f"Secret {api.namespace}/{self.name}"
        self.client = ControlPlaneClient(config.server, code=config.code)
        self.control_plane_wait_s = control_plane_wait_s
        self.peer_secret_wait_s = peer_secret_wait_s
        self.sleep = sleep

    # -- the control plane, waited for while it does not answer --------------------------
    def _patiently(self, what: str, call: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.control_plane_wait_s
        delay = 0.5
        while True:
            try:
                return asyncio.run(call())
            except ApiError as exc:
                if exc.status < 500:
                    raise
                problem = str(exc)
            except OSError as exc:
                problem = str(exc)
            if time.monotonic() + delay > deadline:
                raise EnrolError(
                    f"cannot {what}: the control plane at {self.config.server} did not answer "
                    f"for {self.control_plane_wait_s:.0f} s ({problem}); the init container "
                    f"is restarted and tries again"
                )
            log.warning("cannot %s yet (%s); trying again in %.1f s", what, problem, delay)
            self.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _works(self, credential: str) -> bool:
        """Whether the control plane takes ``credential`` (a heartbeat); False when it does
        not know it; :class:`EnrolError` when its node was revoked."""
        self.client.credential = credential
        try:
            self._patiently("check the node credential", self.client.heartbeat)
            return True
        except ApiError as exc:
            if exc.code == rest_errors.ERROR_NODE_REVOKED:
                raise EnrolError(
                    f"node {self.config.name} was revoked by an admin ({exc.message}). The "
                    f"step does not enrol it again on its own. To bring this node back: "
                    f"kubectl -n {self.api.namespace} delete secret {self.name}, then delete "
                    f"this pod (kubectl -n {self.api.namespace} delete pod <pod>); the new "
                    f"pod enrols the node with the join token in Secret adaptrain-join-token "
                    f"(one use) — docs/kubernetes.md, 'Revoking a node'"
                ) from None
            if exc.status == 401:
                log.warning(
                    "the credential in %s was rejected (%s); enrolling again",
                    self.where,
                    exc.message,
                )
                return False
            raise EnrolError(f"the control plane refused this node: {exc.message}") from None

    def _enrol(self) -> tuple[str, Any]:
        if not self.config.join_token:
            raise EnrolError(
                f"node {self.config.name} has no working credential in {self.where} and "
                f"AGENT_JOIN_TOKEN is empty: create the Secret adaptrain-join-token holding "
                f"a join token with a use left for each node to enrol (docs/kubernetes.md, "
                f"step 4)"
            )
        enrolment = self._patiently(
            "enrol",
            lambda: self.client.enrol(
                join_token=self.config.join_token or "",
                name=self.config.name,
                address=self.config.address,
                slots=self.config.slots,
                labels=self.config.labels,
            ),
        )
        log.info(
            "enrolled as node %s (id %s), advertising address %s",
            enrolment.name,
            enrolment.node,
            self.config.address,
        )
        return enrolment.credential, enrolment.node

    # -- the step ----------------------------------------------------------------------
    def run(self) -> Outcome:
        secret = self.api.get_secret(self.name)
        stored = credential_of(secret)
        if stored is not None and self._works(stored):
            log.info("node %s: using the credential in %s", self.config.name, self.where)
            return Outcome(stored, "reused")
        try:
            credential, node_id = self._enrol()
        except ApiError as exc:
            if exc.code == rest_errors.ERROR_NODE_NAME_TAKEN:
                return self._wait_for_peer(exc, stale=stored)
            if exc.code in (
                rest_errors.ERROR_JOIN_TOKEN_UNKNOWN,
                rest_errors.ERROR_JOIN_TOKEN_REVOKED,
                rest_errors.ERROR_JOIN_TOKEN_EXPIRED,
                rest_errors.ERROR_JOIN_TOKEN_USED_UP,
            ):
                raise EnrolError(
                    f"node {self.config.name} has no usable credential in {self.where} and "
                    f"the join token in Secret adaptrain-join-token was refused: {exc.message} "
                    f"Create a token with enough uses (adaptrain join-tokens create --uses N) "
                    f"and replace that Secret (docs/kubernetes.md, step 4); the init "
                    f"container is restarted and tries again"
                ) from None
            raise EnrolError(
                f"the control plane refused node {self.config.name}'s enrolment: {exc.message}"
            ) from None
        body = secret_body(self.name, self.config, credential, node_id)
        self._store(body, secret)
        return Outcome(credential, "enrolled")

    def _store(self, body: Json, previous: Json | None) -> None:
        """Put the new credential in the Secret: create it, or replace the one with a
        rejected credential; another pod's write in between (409) is read again."""
        while True:
            try:
                if previous is None:
                    self.api.create_secret(body)
                    log.info("created %s", self.where)
                else:
                    body["metadata"]["resourceVersion"] = previous["metadata"]["resourceVersion"]
                    self.api.replace_secret(body)
                    log.info("replaced the rejected credential in %s", self.where)
                return
            except KubernetesApiError as exc:
                if exc.status != 409:
                    raise
            # Written by someone else since we read it. Our enrolment holds the node's name,
            # so a credential other than ours is stale: it is overwritten (optimistically,
            # with the resourceVersion just read).
            previous = self.api.get_secret(self.name)
            theirs = credential_of(previous)
            mine = base64.b64decode(body["data"][SECRET_KEY]).decode()
            log.warning("%s was written by another pod meanwhile; reading it again", self.where)
            if theirs == mine:
                return
            body["metadata"].pop("resourceVersion", None)

    def _wait_for_peer(self, exc: ApiError, stale: str | None) -> Outcome:
        """Another pod enrolled the name a moment ago (two pods of the node during a
        rollout): its Secret appears shortly; a Secret that never comes means the name is
        held by a node this cluster has no credential for."""
        deadline = time.monotonic() + self.peer_secret_wait_s
        while True:
            theirs = credential_of(self.api.get_secret(self.name))
            if theirs is not None and theirs != stale and self._works(theirs):
                log.info("node %s: using the credential another pod stored", self.config.name)
                return Outcome(theirs, "peer")
            if time.monotonic() >= deadline:
                raise EnrolError(
                    f"{exc.message} (Kubernetes: {self.where} holds no working credential "
                    f"for it; if the Secret was deleted, revoke or delete node "
                    f"{self.config.name} in adaptrain, then delete this pod)"
                )
            self.sleep(1.0)


def write_credential(path: Path, credential: str) -> None:
    """Hand the credential to the agent container (owner-only file, replaced whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(credential)
    os.replace(partial, path)


def main(env: Mapping[str, str] | None = None) -> int:
    """``adaptrain-agent enrol-kubernetes``: 0 when ``AGENT_CREDENTIAL_FILE`` holds a working
    credential; 1 (with the reason on stderr) otherwise."""
    try:
        config = load_config(env)
    except ConfigError as exc:
        print(f"agent enrol-kubernetes: {exc}", file=sys.stderr)
        return 1
    try:
        api = KubernetesApi.in_cluster(env)
        outcome = KubernetesEnrolment(config, api).run()
        write_credential(config.credential_file, outcome.credential)
    except (EnrolError, KubernetesApiError, OSError) as exc:
        problem = str(exc)
        if isinstance(exc, KubernetesApiError) and exc.status in (401, 403):
            problem += (
                " (the pod's ServiceAccount needs get, create and update on secrets in its "
                "namespace: deploy/kubernetes/base/agent-rbac.yaml)"
            )
        # A credential an earlier run of this pod left must not start the agent now.
        with contextlib.suppress(OSError):
            config.credential_file.unlink(missing_ok=True)
        print(f"agent enrol-kubernetes: {problem}", file=sys.stderr)
        return 1
    print(f"agent enrol-kubernetes: node {config.name}: credential {outcome.how}", flush=True)
    return 0
