"""A worker takes each command once by its seq and each cluster version once, however
often the agent delivers them (it redelivers after a restart); a redelivered command it
already applied is answered again with the reply it gave."""

from __future__ import annotations

import json

from agent import protocol
from agent.runtime import Session


def session(first_seq: int = 0) -> Session:
    s = Session(
        job=1,
        rank=0,
        size=1,
        peers=["127.0.0.1:1"],
        params={},
        first_seq=first_seq,
        address="127.0.0.1:1",
        cluster_version=1,
    )
    return s


def command(seq: int, action: str = "set_lr") -> dict:
    return {
        "type": "command",
        "id": 100 + seq,
        "seq": seq,
        "action": action,
        "payload": {"value": 0.1},
    }


def sent(capsys) -> list[dict]:
    return [
        json.loads(line[len(protocol.PREFIX) :])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(protocol.PREFIX)
    ]


def test_a_command_delivered_again_before_and_after_it_was_taken_is_taken_once():
    s = session()
    for seq in (1, 2, 1, 2, 2):
        s._on_agent_message(command(seq))
    assert s.commands.received_seq() == 2
    assert [c.seq for c in s.commands.take(2)] == [1, 2]
    for seq in (1, 2, 3):
        s._on_agent_message(command(seq))
    assert [c.seq for c in s.commands.take(3)] == [3]


def test_an_applied_command_redelivered_is_not_applied_again_but_answered_again(capsys):
    s = session()
    s._on_agent_message(command(1))
    (taken,) = s.commands.take(1)
    s.send_applied(taken, step=42, lr=0.1)
    assert sent(capsys) == [{"type": "applied", "id": 101, "seq": 1, "step": 42, "lr": 0.1}]
    s._on_agent_message(command(1))
    assert s.commands.take(5) == []
    assert sent(capsys) == [{"type": "applied", "id": 101, "seq": 1, "step": 42, "lr": 0.1}]
    # A command not answered yet (still waiting in the inbox) is not answered on redelivery.
    s._on_agent_message(command(2))
    s._on_agent_message(command(2))
    assert sent(capsys) == []
    assert [c.seq for c in s.commands.take(2)] == [2]


def test_commands_up_to_the_first_seq_are_ignored():
    s = session(first_seq=5)
    s._on_agent_message(command(4))
    s._on_agent_message(command(6))
    assert s.commands.received_seq() == 6
    assert [c.seq for c in s.commands.take(6)] == [6]


def test_a_cluster_version_already_known_is_ignored():
    s = session()
    s._on_agent_message(
        {"type": "cluster", "version": 2, "members": ["127.0.0.1:1", "127.0.0.1:2"]}
    )
    s._on_agent_message({"type": "cluster", "version": 2, "members": ["127.0.0.1:9"]})
    assert s.membership.cluster_members(2) == ["127.0.0.1:1", "127.0.0.1:2"]
    s.cluster_version = 3  # it moved on to version 3
    s._on_agent_message({"type": "cluster", "version": 1, "members": ["127.0.0.1:7"]})
    assert 1 not in s.membership._clusters and s.membership.latest_cluster_version() == 3
