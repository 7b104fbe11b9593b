"""Pushes over the channel layer can be lost: Redis is down when one is made, or a
restarted (empty) Redis forgot the agent's group while its WebSocket stays open. The
command is a row either way: the request that issued it succeeds, and the agent's
consumer sends it again and joins its group again."""

import socket

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from celery import Celery
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings

from controlplane.celery import enqueue
from controlplane.jobs.models import Command
from controlplane.jobs.selectors import commands_unfinished_for_node
from controlplane.jobs.services.commands import command_ack, command_issue, command_mark_sent
from controlplane.live import channels
from controlplane.live.consumers import AgentCommandConsumer

pytestmark = pytest.mark.django_db(transaction=True)


def _dead_redis_url() -> str:
    """A Redis URL where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def job(placed_job):
    return placed_job


def agent(node):
    c = WebsocketCommunicator(AgentCommandConsumer.as_asgi(), "/ws/agent/")
    c.scope["node"] = node
    return c


def test_a_command_issued_while_the_channel_layer_is_down_is_accepted_and_kept(api, job, settings):
    dead = _dead_redis_url()
    settings.CHANNEL_LAYERS = {
        "default": {
            **django_settings.CHANNEL_LAYERS["default"],
            "CONFIG": {"hosts": [dead], "prefix": "dead"},
        }
    }
    response = api.post(
        f"/api/v1/jobs/{job.id}/commands/", {"action": "set_lr", "value": 0.5}, format="json"
    )
    assert response.status_code == 201, response.content
    command = Command.objects.get(id=response.json()[0]["id"])
    assert command.state == Command.State.PENDING  # delivered when the agent's consumer can


def test_a_task_that_cannot_be_queued_is_logged_not_raised(caplog):
    # Not the current app, and its task not shared: the control plane's app stays as it is.
    app = Celery("dead-broker", broker=_dead_redis_url(), set_as_current=False)

    @app.task(name="tests.nothing", shared=False)
    def nothing(x):
        return x

    assert enqueue(nothing.name, 1, celery_app=app) is False
    assert "could not queue tests.nothing" in caplog.text


def test_a_push_lost_with_the_agent_group_is_sent_again_and_the_group_rejoined(node, job, settings):
    settings.CHANNEL_REFRESH_S = 0.5
    start = Command.objects.get(job=job, type=Command.Type.START)
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]

    def forget_groups():
        """What a Redis restart does to channel-layer groups."""
        keys = channels.redis_client().keys(f"{prefix}:group:*")
        if keys:
            channels.redis_client().delete(*keys)

    async def scenario():
        c = agent(node)
        assert (await c.connect())[0]
        assert (await c.receive_json_from(timeout=5))["id"] == start.id
        await c.send_json_to({"type": "ack", "id": start.id})
        await sync_to_async(forget_groups)()
        # Pushed to nobody: the group is gone, the socket still open.
        [command] = await sync_to_async(command_issue)(
            job=job, type="set_lr", value=0.5, issued_by="user:t"
        )
        again = await c.receive_json_from(timeout=5)
        await c.send_json_to({"type": "ack", "id": command.id})
        # Joined again: a push through the group arrives.
        await sync_to_async(channels.push_command_to_agent)(node.id, {"type": "probe"})
        probe = await c.receive_json_from(timeout=5)
        assert await c.receive_nothing(timeout=1.2)  # acked: not sent again
        await c.disconnect()
        return command, again, probe

    command, again, probe = async_to_sync(scenario)()
    assert again["id"] == command.id and again["action"] == "set_lr"
    assert probe == {"type": "probe"}
    command.refresh_from_db()
    assert command.state == Command.State.ACKED


def test_only_commands_unacknowledged_for_a_while_are_sent_again(node, job):
    start = Command.objects.get(job=job, type=Command.Type.START)
    assert commands_unfinished_for_node(node, unacked_for_s=60) == []
    assert [c.id for c in commands_unfinished_for_node(node, unacked_for_s=0)] == [start.id]
    command_mark_sent(command_id=start.id)
    assert commands_unfinished_for_node(node, unacked_for_s=60) == []
    command_ack(node=node, command_id=start.id)
    assert commands_unfinished_for_node(node, unacked_for_s=0) == []
