"""/ws/agent/: a report that carries a ``ref`` is confirmed once handled, so the agent
can stop sending it (it sends it again after reconnecting or restarting until then);
a report sent twice is applied once."""

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from controlplane.jobs.models import Command
from controlplane.live.consumers import AgentCommandConsumer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def start_command(placed_job):
    return Command.objects.get(job=placed_job, type=Command.Type.START)


def agent(node):
    c = WebsocketCommunicator(AgentCommandConsumer.as_asgi(), "/ws/agent/")
    c.scope["node"] = node
    return c


def test_reports_with_a_ref_are_confirmed_and_a_repeated_one_is_applied_once(node, start_command):
    async def scenario():
        c = agent(node)
        assert (await c.connect())[0]
        delivered = await c.receive_json_from(timeout=5)  # the start command, not acked yet
        assert delivered["id"] == start_command.id
        await c.send_json_to({"type": "ack", "id": start_command.id})
        applied = {"type": "applied", "id": start_command.id, "step": 0, "ref": "r-1"}
        await c.send_json_to(applied)
        first = await c.receive_json_from(timeout=5)
        # The agent restarted before it saw the confirmation and reports again (this copy
        # says step 7: only the first report counts).
        await c.send_json_to({**applied, "step": 7})
        second = await c.receive_json_from(timeout=5)
        await c.send_json_to({"type": "applied", "id": 10**9, "step": 0, "ref": "r-2"})  # refused
        refused = [await c.receive_json_from(timeout=5), await c.receive_json_from(timeout=5)]
        await c.send_json_to({"type": "ack", "id": start_command.id})  # no ref: no confirmation
        assert await c.receive_nothing(timeout=0.3)
        await c.disconnect()
        return first, second, refused

    first, second, refused = async_to_sync(scenario)()
    assert first == second == {"type": "received", "ref": "r-1"}
    assert refused[0]["type"] == "error" and refused[1] == {"type": "received", "ref": "r-2"}
    start_command.refresh_from_db()
    assert start_command.state == Command.State.APPLIED and start_command.applied_step == 0
