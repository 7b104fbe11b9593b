"""/ws/agent/ and the node's standing: the agent names its protocol and version in
headers when it connects (kept on the node); a protocol the control plane does not
speak is answered with an error and the close code that stops the agent; a revoked
node's open socket is closed at once with the code that stops it, and a revoked
credential that connects again is told the same way; a deleted node's socket is closed."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator

from agent.protocol.control import CLOSE_NODE_REVOKED, CLOSE_PROTOCOL_INCOMPATIBLE
from controlplane.asgi import application
from controlplane.jobs.models import Node
from controlplane.jobs.services.nodes import (
    join_token_create,
    node_delete,
    node_enrol,
    node_revoke,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def credential() -> str:
    _, credential = node_enrol(
        join_token=join_token_create()[1], name="n1", address="127.0.0.1", slots=2, labels={}
    )
    return credential


def agent(credential: str, protocol: str | None = "1", version: str = "0.3.0"):
    headers = [(b"authorization", f"Node {credential}".encode())]
    if protocol is not None:
        headers += [
            (b"x-adaptrain-protocol", protocol.encode()),
            (b"x-adaptrain-agent-version", version.encode()),
        ]
    return WebsocketCommunicator(application, "/ws/agent/", headers=headers)


async def closed_with(c: WebsocketCommunicator) -> tuple[int, list[dict]]:
    """The close code the consumer sent, and the frames before it (then the client goes)."""
    frames = []
    while True:
        output = await c.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            await c.disconnect(code=output["code"])
            return output["code"], frames
        frames.append(output)


def test_the_agents_version_and_protocol_are_kept_on_the_node(credential):
    async def scenario():
        c = agent(credential, "1", "0.3.0")
        assert (await c.connect())[0]
        assert await c.receive_nothing(timeout=0.3)
        await c.disconnect()

    async_to_sync(scenario)()
    node = Node.objects.get(name="n1")
    assert (node.agent_version, node.protocol, node.status) == ("0.3.0", 1, "online")


def test_a_revoked_nodes_socket_is_closed_at_once_and_it_is_told_so_again(credential):
    node_id = Node.objects.get(name="n1").id

    async def scenario():
        c = agent(credential)
        assert (await c.connect())[0]
        await sync_to_async(node_revoke)(node_id=node_id, actor="user:root")
        first = await closed_with(c)
        again = agent(credential)
        assert (await again.connect())[0]  # accepted only to be closed with the reason
        second = await closed_with(again)
        return first, second

    (first_code, _), (second_code, frames) = async_to_sync(scenario)()
    assert first_code == second_code == CLOSE_NODE_REVOKED
    assert "revoked by user:root" in frames[0]["text"]


def test_a_protocol_not_spoken_is_refused_with_the_close_code_that_stops_the_agent(credential):
    async def scenario():
        c = agent(credential, "2", "9.0.0")
        assert (await c.connect())[0]
        newer = await closed_with(c)
        c = agent(credential, "two")
        assert (await c.connect())[0]
        malformed = await closed_with(c)
        return newer, malformed

    (code, frames), (bad_code, bad_frames) = async_to_sync(scenario)()
    assert code == bad_code == CLOSE_PROTOCOL_INCOMPATIBLE
    assert "upgrade the control plane first" in frames[0]["text"]
    assert "X-Adaptrain-Protocol must be an integer" in bad_frames[0]["text"]
    node = Node.objects.get(name="n1")
    assert node.status == "incompatible" and node.agent_version == "9.0.0"


def test_a_deleted_nodes_socket_is_closed(credential):
    node_id = Node.objects.get(name="n1").id

    async def scenario():
        c = agent(credential, protocol=None)  # an agent from before the headers
        assert (await c.connect())[0]
        await sync_to_async(node_delete)(node_id=node_id, actor="user:root")
        code, _ = await closed_with(c)
        again = agent(credential)
        connected, refused_code = await again.connect()
        return code, connected, refused_code

    code, connected, refused_code = async_to_sync(scenario)()
    assert code == 4401
    assert not connected and refused_code == 4401
