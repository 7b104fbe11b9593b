"""A node's credential: check the stored one, or enrol with the join token.

The credential is written to ``AgentConfig.credential_file`` (mode 0600) once enrolment
succeeds; a stored credential the control plane rejects (401, not revoked) is replaced by
a new enrolment. A control plane that cannot be reached or fails is tried again with
back-off; one that refuses the node for good raises :class:`Refused`, whose message says
why and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from adaptrain.rest import ApiError
from agent.daemon.client import ControlPlaneClient
from agent.daemon.config import AgentConfig
from agent.protocol import rest as rest_errors

log = logging.getLogger("agent")

# An unreachable control plane at start-up is tried again, up to this delay between tries.
START_RETRY_MAX_S = 15.0

# On Kubernetes the credential lives in a Secret (agent.daemon.kubernetes_enrol).
KUBERNETES_RECOVERY = (
    " (On Kubernetes: delete the Secret adaptrain-node-<node name>, then the pod: "
    "docs/kubernetes.md.)"
)


class Refused(Exception):
    """The control plane refused this node for good: the message says why and what to do."""


def node_refusal(exc: ApiError) -> str | None:
    """What to tell the operator when ``exc`` refuses the node for good; None otherwise."""
    if exc.code == rest_errors.ERROR_NODE_REVOKED:
        return (
            f"this node was revoked by an admin ({exc.message}); the agent stops. To use this "
            f"machine again, delete AGENT_STATE_DIR/credential and start the agent with a new "
            f"AGENT_JOIN_TOKEN.{KUBERNETES_RECOVERY}"
        )
    if exc.code == rest_errors.ERROR_PROTOCOL_INCOMPATIBLE:
        return f"the control plane refuses this agent's protocol: {exc.message}"
    return None


async def ensure_credential(
    client: ControlPlaneClient, config: AgentConfig, stopping: asyncio.Event
) -> bool:
    """Check the stored credential, or enrol with the join token; a control plane that
    does not answer (or fails) is tried again until ``stopping`` is set (then False).
    :class:`Refused` when it refuses."""
    delay = 0.5
    while True:
        try:
            await _ensure_credential_once(client, config)
            return True
        except ApiError as exc:
            reason = node_refusal(exc)
            if reason is not None:
                raise Refused(reason) from None
            if exc.status < 500:
                raise Refused(
                    f"the control plane refused this node's enrolment: {exc.message}"
                ) from None
            problem = str(exc)
        except OSError as exc:
            problem = str(exc)
        log.warning("cannot enrol yet (%s); trying again in %.1f s", problem, delay)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        if stopping.is_set():
            return False
        delay = min(delay * 2, START_RETRY_MAX_S)


async def _ensure_credential_once(client: ControlPlaneClient, config: AgentConfig) -> None:
    path = config.credential_file
    if path.exists():
        client.credential = path.read_text().strip()
        try:
            await client.heartbeat()
            return
        except ApiError as exc:
            if exc.status != 401 or exc.code == rest_errors.ERROR_NODE_REVOKED:
                raise
            log.warning("stored node credential was rejected (%s); enrolling again", exc.message)
    if not config.join_token:
        raise Refused(
            "this node is not enrolled: set AGENT_JOIN_TOKEN to a join token (nodes page → "
            "Add a node, or: python manage.py create_join_token). On Kubernetes the agent "
            "container has no join token: its init step enrols the node; delete the pod "
            "to run it again (docs/kubernetes.md)."
        )
    enrolment = await client.enrol(
        join_token=config.join_token,
        name=config.name,
        address=config.address,
        slots=config.slots,
        labels=config.labels,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(enrolment.credential)
    client.credential = enrolment.credential
    log.info(
        "enrolled as node %s (id %s), advertising address %s",
        enrolment.name,
        enrolment.node,
        config.address,
    )
