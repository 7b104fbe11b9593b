"""A command the agent took on is carried out even when its ack fails because the command
channel closed at that moment (as it does while Redis restarts): the redelivery that
follows is only acked again, so a command forwarded only after a successful ack would
never reach the workers. (Found by tests/faults/test_process_faults.py's Redis kill: a
``set_lr`` acked by both agents, applied by neither worker.)"""

from __future__ import annotations

import asyncio

import pytest
import websockets

from agent.daemon.agent import Agent
from agent.daemon.config import load_config
from agent.protocol.control import CommandFrame


class Group:
    """The agent's side of a job's workers, as far as a command goes."""

    def __init__(self) -> None:
        self.recorded: list[int] = []
        self.sent: list[int] = []

    def record_command(self, frame: CommandFrame) -> None:
        self.recorded.append(frame.id)

    async def send_command(self, frame: CommandFrame) -> None:
        self.sent.append(frame.id)


class Channel:
    """The command channel: closed under the first ack, working afterwards."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed_once = False

    async def send(self, text: str) -> None:
        if not self.closed_once:
            self.closed_once = True
            raise websockets.ConnectionClosed(None, None)
        self.sent.append(text)


def test_a_command_whose_ack_fails_is_still_forwarded_and_its_redelivery_only_acked(tmp_path):
    config = load_config(
        {
            "AGENT_SERVER": "http://127.0.0.1:9",
            "AGENT_NAME": "n1",
            "AGENT_ADDRESS": "127.0.0.1",
            "AGENT_STATE_DIR": str(tmp_path),
        }
    )
    agent = Agent(config)
    group = Group()
    agent.groups[5] = group  # type: ignore[assignment]
    frame = CommandFrame(id=9, job=5, seq=2, action="set_lr", payload={"value": 0.04})
    channel = Channel()

    async def deliver() -> None:
        await agent._on_command(channel, frame)  # type: ignore[arg-type]

    with pytest.raises(websockets.ConnectionClosed):
        asyncio.run(deliver())
    assert group.sent == [9]  # forwarded although the ack did not go out
    asyncio.run(deliver())  # redelivered on the next connection
    assert group.sent == [9] and group.recorded == [9]  # acked again, carried out once
    assert len(channel.sent) == 1
    agent.metrics.close()
