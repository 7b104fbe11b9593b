"""Every frame on the agent's WebSocket /ws/agent/ (agent.protocol.control), and the
payloads of the commands the agent carries out itself, are built and read by one
dataclass: each reads back what it writes, writes exactly the JSON the control plane and
the agent exchanged before the typed frames, and a malformed frame is refused with a
message naming the frame and the field."""

from __future__ import annotations

import json

import pytest

from agent.protocol import ProtocolError
from agent.protocol import control as c
from agent.protocol import worker as w
from agent.protocol.base import Frame, Message

START = {
    "job": 4,
    "entrypoint": "examples.digits.train",
    "hyperparameters": {"steps": 500, "lr_scaling": "sqrt"},
    "batch_size": 64,
    "lr": 0.05,
    "strategy": "ssgd",
    "topology": "ring",
    "world_size": 4,
    "cluster_version": 1,
    "workers_min": 2,
    "ranks": [2, 3],
}
JOIN = {
    "cluster_version": 2,
    "members": ["10.0.0.1:4000", "10.0.0.2:4000"],
    "workers_min": 2,
    "entrypoint": "examples.digits.train",
    "hyperparameters": {"steps": 500},
    "batch_size": 64,
    "lr": 0.05,
    "strategy": "ssgd",
    "topology": "ring",
    "workers": [{"rank": 4, "cluster_rank": 2}],
}
START_PAYLOAD = c.StartPayload(
    job=4,
    entrypoint="examples.digits.train",
    hyperparameters={"steps": 500, "lr_scaling": "sqrt"},
    batch_size=64,
    lr=0.05,
    strategy="ssgd",
    topology="ring",
    world_size=4,
    cluster_version=1,
    workers_min=2,
    ranks=(2, 3),
)
JOIN_PAYLOAD = c.JoinPayload(
    cluster_version=2,
    members=("10.0.0.1:4000", "10.0.0.2:4000"),
    workers_min=2,
    entrypoint="examples.digits.train",
    hyperparameters={"steps": 500},
    batch_size=64,
    lr=0.05,
    strategy="ssgd",
    topology="ring",
    workers=(c.JoinerSpec(rank=4, cluster_rank=2),),
)

# Each frame with the dict the code sent before (controlplane/jobs/services.py,
# controlplane/live/consumers.py, agent/daemon), in its key order.
TO_AGENT: list[tuple[Frame, dict]] = [
    (
        c.CommandFrame(id=31, job=4, seq=1, action="start", payload=START),
        {"type": "command", "id": 31, "job": 4, "seq": 1, "action": "start", "payload": START},
    ),
    (
        c.CommandFrame(id=32, job=4, seq=2, action="set_batch_size", payload={"value": 128}),
        {
            "type": "command",
            "id": 32,
            "job": 4,
            "seq": 2,
            "action": "set_batch_size",
            "payload": {"value": 128},
        },
    ),
    (
        c.ClusterFrame(
            job=4,
            version=2,
            members=("10.0.0.1:4000", "10.0.0.2:4000"),
            workers=(0, 1),
            workers_min=2,
        ),
        {
            "type": "cluster",
            "job": 4,
            "version": 2,
            "members": ["10.0.0.1:4000", "10.0.0.2:4000"],
            "workers": [0, 1],
            "workers_min": 2,
        },
    ),
    (c.ReceivedFrame(ref="9f2c"), {"type": "received", "ref": "9f2c"}),
    (
        c.ErrorFrame(message='Expected {"type": "ack"|"applied"|"failed", "id": <int>}.'),
        {"type": "error", "message": 'Expected {"type": "ack"|"applied"|"failed", "id": <int>}.'},
    ),
    (
        c.ErrorFrame(message="Command 9 is not addressed to node n1.", id=9),
        {"type": "error", "id": 9, "message": "Command 9 is not addressed to node n1."},
    ),
    (
        c.ErrorFrame(message="Job 4 has no worker 7 on node n1.", job=4),
        {"type": "error", "job": 4, "message": "Job 4 has no worker 7 on node n1."},
    ),
]
FROM_AGENT: list[tuple[Frame, dict]] = [
    (c.AckFrame(id=31), {"type": "ack", "id": 31}),
    (
        c.AppliedFrame(id=31, step=0, ref="a1"),
        {"type": "applied", "id": 31, "step": 0, "ref": "a1"},
    ),
    (
        c.AppliedFrame(id=32, step=1200, lr=0.0707, ref="a2"),
        {"type": "applied", "id": 32, "step": 1200, "lr": 0.0707, "ref": "a2"},
    ),
    (
        c.AppliedFrame(id=33, step=None, ref="a3"),  # carried out by the agent: no step
        {"type": "applied", "id": 33, "step": None, "ref": "a3"},
    ),
    (
        c.FailedFrame(id=34, error="job 4 has no running workers on this node", ref="f1"),
        {
            "type": "failed",
            "id": 34,
            "error": "job 4 has no running workers on this node",
            "ref": "f1",
        },
    ),
    (
        c.WorkerFrame(job=4, rank=4, event=w.StandbyLine(address="10.0.0.2:4100"), ref="w1"),
        {
            "type": "worker",
            "job": 4,
            "rank": 4,
            "event": "standby",
            "address": "10.0.0.2:4100",
            "ref": "w1",
        },
    ),
    (
        c.WorkerFrame(
            job=4,
            rank=4,
            event=w.RescaledLine(version=3, rank=2, size=3, step=1500, paused_s=1.25),
            ref="w2",
        ),
        {
            "type": "worker",
            "job": 4,
            "rank": 4,
            "event": "rescaled",
            "version": 3,
            "size": 3,
            "step": 1500,
            "paused_s": 1.25,
            "cluster_rank": 2,
            "ref": "w2",
        },
    ),
    (
        c.WorkerFrame(job=4, rank=3, event=w.LeftLine(version=4, step=1800), ref="w3"),
        {
            "type": "worker",
            "job": 4,
            "rank": 3,
            "event": "left",
            "version": 4,
            "step": 1800,
            "ref": "w3",
        },
    ),
    (
        c.WorkerFrame(job=4, rank=3, event=w.LeftLine(version=4), ref="w4"),
        {"type": "worker", "job": 4, "rank": 3, "event": "left", "version": 4, "ref": "w4"},
    ),
    (
        c.WorkerFrame(
            job=4, rank=1, event=w.PeerFailedLine(version=2, error="peer 3 is gone"), ref="w5"
        ),
        {
            "type": "worker",
            "job": 4,
            "rank": 1,
            "event": "peer_failed",
            "version": 2,
            "error": "peer 3 is gone",
            "ref": "w5",
        },
    ),
    (
        c.WorkerFrame(
            job=4, rank=5, event=c.ExitedEvent(code=None, error="could not start: boom"), ref="w6"
        ),
        {
            "type": "worker",
            "job": 4,
            "rank": 5,
            "event": "exited",
            "code": None,
            "error": "could not start: boom",
            "ref": "w6",
        },
    ),
]
PAYLOADS: list[tuple[Message, dict]] = [
    (START_PAYLOAD, START),
    (JOIN_PAYLOAD, JOIN),
    (c.ScalePayload(value=3), {"value": 3}),
    (c.ScalePayload(value=3, join=JOIN_PAYLOAD), {"value": 3, "join": JOIN}),
    (c.StopPayload(), {}),
    (
        c.StopPayload(terminate=True, reason="worker 1 exited with code 3"),
        {"terminate": True, "reason": "worker 1 exited with code 3"},
    ),
    (
        c.StopPayload(joiners=(4, 5), reason="the joiners did not get ready"),
        {"joiners": [4, 5], "reason": "the joiners did not get ready"},
    ),
    (c.JoinerSpec(rank=4, cluster_rank=2), {"rank": 4, "cluster_rank": 2}),
]


def test_every_frame_has_an_example():
    frames = {
        obj
        for obj in vars(c).values()
        if isinstance(obj, type) and issubclass(obj, Frame) and obj.__module__ == c.__name__
    }
    examples = {type(f) for f, _ in TO_AGENT + FROM_AGENT} | {c.ExitedEvent}
    assert frames == examples


def _ids(x):
    return getattr(x, "TYPE", None)


@pytest.mark.parametrize(("frame", "wire"), TO_AGENT, ids=_ids)
def test_a_frame_to_an_agent_is_written_as_before_and_read_back(frame, wire):
    assert json.dumps(frame.to_dict()) == json.dumps(wire)
    assert type(frame).from_dict(wire) == frame
    assert c.parse_to_agent(wire) == frame
    assert c.parse_to_agent(frame.to_dict()) == frame


@pytest.mark.parametrize(("frame", "wire"), FROM_AGENT, ids=_ids)
def test_a_frame_from_an_agent_is_written_as_before_and_read_back(frame, wire):
    assert json.dumps(frame.to_dict()) == json.dumps(wire)
    assert type(frame).from_dict(wire) == frame
    assert c.parse_from_agent(wire) == frame
    assert c.parse_from_agent(frame.to_dict()) == frame


@pytest.mark.parametrize(("payload", "wire"), PAYLOADS, ids=lambda x: getattr(x, "WHAT", None))
def test_a_command_payload_is_written_as_before_and_read_back(payload, wire):
    assert json.dumps(payload.to_dict()) == json.dumps(wire)
    assert type(payload).from_dict(wire) == payload


def test_a_command_reads_its_payload_by_action():
    start = c.CommandFrame(id=31, job=4, seq=1, action="start", payload=START)
    assert start.typed_payload() == start.start_payload() == START_PAYLOAD
    grow = c.CommandFrame(
        id=35, job=4, seq=5, action="scale_workers", payload={"value": 3, "join": JOIN}
    )
    assert grow.typed_payload() == c.ScalePayload(value=3, join=JOIN_PAYLOAD)
    stop = c.CommandFrame(id=36, job=4, seq=6, action="stop", payload={"joiners": [4]})
    assert stop.typed_payload() == c.StopPayload(joiners=(4,))
    assert (
        c.CommandFrame(id=37, job=4, seq=7, action="set_lr", payload={"value": 1}).typed_payload()
        is None
    )
    with pytest.raises(
        ProtocolError, match=r"payload of 'start' command 38: missing field 'ranks'"
    ):
        c.CommandFrame(
            id=38,
            job=4,
            seq=1,
            action="start",
            payload={k: v for k, v in START.items() if k != "ranks"},
        ).typed_payload()


def test_the_lines_a_command_and_a_cluster_version_become_for_the_workers():
    command = c.CommandFrame(id=32, job=4, seq=2, action="set_lr", payload={"value": 0.1})
    assert command.for_worker() == w.CommandLine(
        id=32, seq=2, action="set_lr", payload={"value": 0.1}
    )
    cluster = c.ClusterFrame(
        job=4, version=2, members=("a:1", "b:2"), workers=(0, 3), workers_min=1
    )
    assert cluster.for_worker() == w.ClusterLine(version=2, members=("a:1", "b:2"))


def test_a_report_is_marked_with_its_ref():
    assert c.with_ref(c.FailedFrame(id=1, error="x"), "r") == c.FailedFrame(
        id=1, error="x", ref="r"
    )


@pytest.mark.parametrize(
    ("parse", "data", "message"),
    [
        (c.parse_to_agent, "ack", "a frame to an agent must be a JSON object, got str"),
        (c.parse_to_agent, {"type": "ack", "id": 3}, "a frame to an agent: unknown type 'ack'"),
        (c.parse_from_agent, {"type": "hello"}, "a frame from an agent: unknown type 'hello'"),
        (c.parse_from_agent, {"type": "ack"}, "'ack' frame: missing field 'id'"),
        (
            c.parse_from_agent,
            {"type": "ack", "id": "3"},
            "'ack' frame: field 'id' must be an integer",
        ),
        (
            c.parse_from_agent,
            {"type": "applied", "id": 3, "step": 1.5},
            "'applied' frame: field 'step' must be an integer, got 1.5",
        ),
        (
            c.parse_from_agent,
            {"type": "worker", "job": 4, "rank": 1, "event": "joined"},
            "'worker' frame: field 'event' must be one of standby, rescaled, left, peer_failed, exited",
        ),
        (
            c.parse_from_agent,
            {"type": "worker", "job": 4, "rank": "1", "event": "left", "version": 2},
            "'worker' frame: field 'rank' must be an integer, got '1'",
        ),
        (
            c.parse_from_agent,
            {
                "type": "worker",
                "job": 4,
                "rank": 4,
                "event": "rescaled",
                "version": 3,
                "size": 3,
                "step": 1,
                "paused_s": 0.1,
            },
            "'worker' frame: missing field 'cluster_rank'",
        ),
        (
            c.parse_from_agent,
            {"type": "worker", "job": 4, "rank": 1, "event": "standby"},
            "'worker' frame (standby): missing field 'address'",
        ),
        (
            c.parse_to_agent,
            {"type": "command", "id": 3, "job": 4, "seq": 2, "action": 7, "payload": {}},
            "'command' frame: field 'action' must be a string, got 7",
        ),
        (
            c.parse_to_agent,
            {"type": "cluster", "job": 4, "version": 2, "members": ["a:1"], "workers": [0]},
            "'cluster' frame: missing field 'workers_min'",
        ),
    ],
)
def test_a_malformed_frame_is_refused_naming_the_frame_and_the_field(parse, data, message):
    with pytest.raises(ProtocolError) as refused:
        parse(data)
    assert str(refused.value).startswith(message)
