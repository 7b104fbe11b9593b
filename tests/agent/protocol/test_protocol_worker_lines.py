"""Every line between an agent and its workers is built and read by one dataclass
(agent.protocol.worker): each reads back what it writes, writes exactly the JSON the
agent and the runtime exchanged before the typed frames (same keys, order and types),
and a malformed line is refused with a message naming the line and the field."""

from __future__ import annotations

import json

import pytest

from agent.protocol import PREFIX, ProtocolError
from agent.protocol import worker as w
from agent.protocol.base import Frame

# Each line with the dict the code wrote before (the runtime's Session.send & co, the
# agent's workers.py, agent.local, the worker channel), in its key order.
EXAMPLES: list[tuple[Frame, dict]] = [
    (
        w.MetricsLine(
            points=(
                w.MetricPoint(name="loss", step=10, value=0.5, time=1700000000.25),
                w.MetricPoint(name="batch_size", step=10, value=64.0, time=1700000000.25, rank=1),
            )
        ),
        {
            "type": "metrics",
            "points": [
                {"name": "loss", "step": 10, "value": 0.5, "time": 1700000000.25},
                {"name": "batch_size", "step": 10, "value": 64.0, "time": 1700000000.25, "rank": 1},
            ],
        },
    ),
    (
        w.AppliedLine(id=101, seq=1, step=42, lr=0.1),
        {"type": "applied", "id": 101, "seq": 1, "step": 42, "lr": 0.1},
    ),
    (w.AppliedLine(id=7, seq=3, step=3000), {"type": "applied", "id": 7, "seq": 3, "step": 3000}),
    (
        w.FailedLine(id=101, seq=1, error="learning rate must be positive, got -1"),
        {"type": "failed", "id": 101, "seq": 1, "error": "learning rate must be positive, got -1"},
    ),
    (
        w.StandbyLine(address="127.0.0.1:4001"),
        {"type": "standby", "address": "127.0.0.1:4001"},
    ),
    (
        w.RescaledLine(version=2, rank=1, size=3, step=120, paused_s=0.75),
        {"type": "rescaled", "version": 2, "rank": 1, "size": 3, "step": 120, "paused_s": 0.75},
    ),
    (w.LeftLine(version=3, step=200), {"type": "left", "version": 3, "step": 200}),
    (w.LeftLine(version=3), {"type": "left", "version": 3}),
    (
        w.PeerFailedLine(version=2, error="peer 1 closed the connection"),
        {"type": "peer_failed", "version": 2, "error": "peer 1 closed the connection"},
    ),
    (w.ExitLine(code=0), {"type": "exit", "code": 0}),
    (w.DroppedLine(metrics=12), {"type": "dropped", "metrics": 12}),
    (w.DetachedLine(), {"type": "detached"}),
    (
        w.CommandLine(id=1001, seq=1, action="set_lr", payload={"value": 0.1}),
        {"type": "command", "id": 1001, "seq": 1, "action": "set_lr", "payload": {"value": 0.1}},
    ),
    (
        w.CommandLine(id=9, seq=4, action="stop"),
        {"type": "command", "id": 9, "seq": 4, "action": "stop", "payload": {}},
    ),
    (
        w.ClusterLine(version=2, members=("127.0.0.1:4000", "127.0.0.1:4001")),
        {"type": "cluster", "version": 2, "members": ["127.0.0.1:4000", "127.0.0.1:4001"]},
    ),
    (w.AckLine(n=5), {"type": "ack", "n": 5}),
    (w.DetachLine(), {"type": "detach"}),
]
FROM_WORKER = {type(f) for f, _ in EXAMPLES} - {
    w.CommandLine,
    w.ClusterLine,
    w.AckLine,
    w.DetachLine,
}


def test_every_line_has_an_example():
    lines = {
        obj
        for obj in vars(w).values()
        if isinstance(obj, type) and issubclass(obj, w.Line) and obj is not w.Line
    }
    assert lines == {type(f) for f, _ in EXAMPLES}


@pytest.mark.parametrize(("frame", "wire"), EXAMPLES, ids=lambda x: getattr(x, "TYPE", None))
def test_a_line_is_written_as_before_and_read_back(frame, wire):
    assert json.dumps(frame.to_dict()) == json.dumps(wire)  # same keys, order and types
    assert type(frame).from_dict(wire) == frame
    assert type(frame).from_dict(frame.to_dict()) == frame
    parse = w.parse_from_worker if type(frame) in FROM_WORKER else w.parse_to_worker
    assert parse(wire) == frame


def test_the_runtime_channels_line_number_is_not_part_of_the_frame():
    wire = {"type": "applied", "id": 101, "seq": 1, "step": 42, "lr": 0.1, "n": 3}
    assert w.parse_from_worker(wire) == w.AppliedLine(id=101, seq=1, step=42, lr=0.1)
    assert w.line_number(wire) == 3
    assert w.line_number({"type": "metrics", "points": []}) is None
    assert w.encode(w.AppliedLine(id=101, seq=1, step=42, lr=0.1), n=3) == (
        b'{"type":"applied","id":101,"seq":1,"step":42,"lr":0.1,"n":3}\n'
    )
    assert w.encode(w.AckLine(n=3)) == b'{"type":"ack","n":3}\n'
    assert w.encode(w.DetachLine()) == b'{"type":"detach"}\n'
    with pytest.raises(ProtocolError, match="'n' must be a positive integer"):
        w.line_number({"type": "exit", "code": 0, "n": "3"})


def test_a_metric_value_keeps_its_json_number_type():
    # A fake worker reports an integer value; it goes on as an integer.
    line = w.parse_from_worker(
        {"type": "metrics", "points": [{"name": "workers", "step": 25, "value": 2, "time": 1.5}]}
    )
    assert line.to_dict()["points"][0]["value"] == 2
    assert isinstance(line.to_dict()["points"][0]["value"], int)


def test_stdio_lines_carry_the_prefix():
    line = w.stdio_line(w.StandbyLine(address="127.0.0.1:4001"))
    assert line == PREFIX + '{"type":"standby","address":"127.0.0.1:4001"}'
    assert w.read_stdio_line(line + "\n") == {"type": "standby", "address": "127.0.0.1:4001"}
    assert w.read_stdio_line("epoch 1: loss 0.3") is None
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        w.read_stdio_line(PREFIX + "[1, 2]")


def test_worker_params_are_the_environment_json():
    params = w.WorkerParams(
        hyperparameters={"steps": 100}, batch_size=32, lr=0.05, strategy="ssgd", topology="ring"
    )
    assert json.dumps(params.to_dict()) == json.dumps(
        {
            "hyperparameters": {"steps": 100},
            "batch_size": 32,
            "lr": 0.05,
            "strategy": "ssgd",
            "topology": "ring",
        }
    )
    assert w.WorkerParams.from_dict(params.to_dict()) == params


@pytest.mark.parametrize(
    ("parse", "data", "message"),
    [
        (w.parse_from_worker, ["applied"], "a line from a worker must be a JSON object, got list"),
        (w.parse_from_worker, {"id": 1}, "a line from a worker: unknown type None"),
        (w.parse_from_worker, {"type": "command"}, "a line from a worker: unknown type 'command'"),
        (w.parse_to_worker, {"type": "applied"}, "a line to a worker: unknown type 'applied'"),
        (
            w.parse_from_worker,
            {"type": "applied", "seq": 1, "step": 2},
            "'applied' line: missing field 'id'",
        ),
        (
            w.parse_from_worker,
            {"type": "applied", "id": "7", "seq": 1, "step": 2},
            "'applied' line: field 'id' must be an integer, got '7'",
        ),
        (
            w.parse_from_worker,
            {"type": "applied", "id": 7, "seq": True, "step": 2},
            "'applied' line: field 'seq' must be an integer, got True",
        ),
        (
            w.parse_from_worker,
            {"type": "rescaled", "version": 2, "rank": 0, "size": 2, "step": 1, "paused_s": "x"},
            "'rescaled' line: field 'paused_s' must be a number, got 'x'",
        ),
        (
            w.parse_from_worker,
            {"type": "metrics", "points": [{"name": "loss", "step": 1, "value": None, "time": 1}]},
            "'metrics' line, points[0]: field 'value' must be a number, got None",
        ),
        (
            w.parse_from_worker,
            {"type": "metrics", "points": {"name": "loss"}},
            "'metrics' line: field 'points' must be an array",
        ),
        (
            w.parse_to_worker,
            {"type": "cluster", "version": 2, "members": []},
            "'cluster' line: field 'members' must list at least one host:port",
        ),
        (
            w.parse_to_worker,
            {"type": "cluster", "version": 2, "members": ["127.0.0.1:1", 7]},
            "'cluster' line: field 'members' must be an array of strings",
        ),
        (
            w.parse_to_worker,
            {"type": "command", "id": 1, "seq": 1, "action": "set_lr", "payload": [0.1]},
            "'command' line: field 'payload' must be an object, got [0.1]",
        ),
    ],
)
def test_a_malformed_line_is_refused_naming_the_line_and_the_field(parse, data, message):
    with pytest.raises(ProtocolError) as refused:
        parse(data)
    assert str(refused.value).startswith(message)
    assert isinstance(refused.value, ValueError)


def test_a_line_read_as_another_type_is_refused():
    with pytest.raises(ProtocolError, match="'failed' line: field 'type' must be 'failed'"):
        w.FailedLine.from_dict({"type": "applied", "id": 1, "seq": 1, "error": "x"})
