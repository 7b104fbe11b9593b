"""The bodies of the agent's REST calls (agent.protocol.rest) read back what they write
and are the JSON the agent's client sent and the control plane answered before the
typed bodies; a malformed body is refused naming the body and the field."""

from __future__ import annotations

import json

import pytest

from agent.protocol import ProtocolError
from agent.protocol import rest as r
from agent.protocol.base import Message
from agent.protocol.worker import MetricPoint

EXAMPLES: list[tuple[Message, dict]] = [
    (
        r.EnrolRequest(
            join_token="join_abc",
            name="node-1",
            address="10.0.0.1",
            slots=4,
            labels={"gpu": "a100"},
        ),
        {
            "join_token": "join_abc",
            "name": "node-1",
            "address": "10.0.0.1",
            "slots": 4,
            "labels": {"gpu": "a100"},
        },
    ),
    (
        r.EnrolRequest(
            join_token="join_abc",
            name="node-1",
            address="10.0.0.1",
            slots=4,
            agent_version="0.2.0",
            protocol=1,
        ),
        {
            "join_token": "join_abc",
            "name": "node-1",
            "address": "10.0.0.1",
            "slots": 4,
            "labels": {},
            "agent_version": "0.2.0",
            "protocol": 1,
        },
    ),
    (
        r.Enrolment(node=3, name="node-1", credential="node_xyz"),
        {"node": 3, "name": "node-1", "credential": "node_xyz"},
    ),
    (r.Heartbeat(), {}),
    (r.Heartbeat(jobs=(4, 9)), {"jobs": [4, 9]}),
    (
        r.Heartbeat(jobs=(4,), agent_version="0.2.0", protocol=1),
        {"jobs": [4], "agent_version": "0.2.0", "protocol": 1},
    ),
    (r.Heartbeat(protocol=2), {"protocol": 2}),
    (
        r.Heartbeat(jobs=(), gpus=(r.GpuStat(uuid="GPU-1", name="NVIDIA H200", power_w=400.0),)),
        {
            "jobs": [],
            "gpus": [
                {
                    "uuid": "GPU-1",
                    "name": "NVIDIA H200",
                    "memory_total_mib": None,
                    "utilization_pct": None,
                    "memory_used_mib": None,
                    "temperature_c": None,
                    "power_w": 400.0,
                    "job": None,
                    "rank": None,
                }
            ],
        },
    ),
    (
        r.GpuStat(uuid="MIG-2", memory_total_mib=20096.0, utilization_pct=12.0, job=3, rank=0),
        {
            "uuid": "MIG-2",
            "name": "",
            "memory_total_mib": 20096.0,
            "utilization_pct": 12.0,
            "memory_used_mib": None,
            "temperature_c": None,
            "power_w": None,
            "job": 3,
            "rank": 0,
        },
    ),
    (
        r.Goodbye(reason="the agent stopped (workers left running)", detached=(4,)),
        {"reason": "the agent stopped (workers left running)", "detached": [4]},
    ),
    (r.Goodbye(), {"reason": "", "detached": []}),
    (
        r.HeartbeatReply(ok=True, heartbeat_timeout_s=30.0, release=(9,)),
        {"ok": True, "heartbeat_timeout_s": 30.0, "release": [9]},
    ),
    (
        r.MetricBatch(
            batch_id="b1",
            points=(
                MetricPoint(name="loss", step=10, value=0.5, time=1.5, job=4),
                MetricPoint(name="batch_size", step=10, value=64.0, time=1.5, rank=0, job=4),
            ),
        ),
        {
            "batch_id": "b1",
            "points": [
                {"name": "loss", "step": 10, "value": 0.5, "time": 1.5, "job": 4},
                {"name": "batch_size", "step": 10, "value": 64.0, "time": 1.5, "rank": 0, "job": 4},
            ],
        },
    ),
    (r.MetricBatchReply(stored=2), {"stored": 2}),
    (
        r.WorkersRegistration(workers=(r.WorkerPort(rank=2, port=41000),)),
        {"workers": [{"rank": 2, "port": 41000}]},
    ),
    (
        r.ClusterSpec(
            job=4,
            version=0,
            world_size=2,
            complete=False,
            members=("10.0.0.1:41000", None),
            workers_min=1,
        ),
        {
            "job": 4,
            "version": 0,
            "world_size": 2,
            "complete": False,
            "members": ["10.0.0.1:41000", None],
            "workers_min": 1,
        },
    ),
    (
        r.JobReport(
            status="running", workers=(r.WorkerStatus(rank=2, state="running", port=41000),)
        ),
        {
            "status": "running",
            "reason": "",
            "workers": [{"rank": 2, "port": 41000, "state": "running"}],
        },
    ),
    (
        r.JobReport(
            status="stopped",
            reason="",
            workers=(
                r.WorkerStatus(rank=3, state="left"),
                r.WorkerStatus(rank=4, state="failed", code=None, error="Traceback ..."),
            ),
        ),
        {
            "status": "stopped",
            "reason": "",
            "workers": [
                {"rank": 3, "state": "left"},
                {"rank": 4, "state": "failed", "code": None, "error": "Traceback ..."},
            ],
        },
    ),
    (
        r.JobReport(status="failed", reason="could not start workers: boom"),
        {"status": "failed", "reason": "could not start workers: boom"},
    ),
    (
        r.LogBatch(
            batch_id="b2",
            job=4,
            lines=(
                r.LogLine(rank=0, stream="stdout", time=1.5, text="epoch 1"),
                r.LogLine(
                    rank=1, stream="stderr", time=1.25, text="Traceback (most recent call last):"
                ),
            ),
        ),
        {
            "batch_id": "b2",
            "job": 4,
            "lines": [
                {"rank": 0, "stream": "stdout", "time": 1.5, "text": "epoch 1"},
                {
                    "rank": 1,
                    "stream": "stderr",
                    "time": 1.25,
                    "text": "Traceback (most recent call last):",
                },
            ],
        },
    ),
    (r.LogBatchReply(stored=2), {"stored": 2}),
]


def test_every_body_has_an_example():
    bodies = {
        obj
        for obj in vars(r).values()
        if isinstance(obj, type) and issubclass(obj, Message) and obj.__module__ == r.__name__
    }
    assert bodies == {type(m) for m, _ in EXAMPLES} | {r.WorkerPort, r.WorkerStatus, r.LogLine}


@pytest.mark.parametrize(("body", "wire"), EXAMPLES, ids=lambda x: getattr(x, "WHAT", None))
def test_a_body_is_written_as_before_and_read_back(body, wire):
    assert json.dumps(body.to_dict()) == json.dumps(wire)
    assert type(body).from_dict(wire) == body
    assert type(body).from_dict(body.to_dict()) == body


@pytest.mark.parametrize(
    ("kind", "data", "message"),
    [
        (r.Enrolment, {"node": 3, "name": "n"}, "enrolment: missing field 'credential'"),
        (r.HeartbeatReply, {"ok": True}, "heartbeat reply: missing field 'heartbeat_timeout_s'"),
        (
            r.ClusterSpec,
            {
                "job": 4,
                "version": 1,
                "world_size": 1,
                "complete": True,
                "members": [3],
                "workers_min": 1,
            },
            "cluster spec: field 'members' must be an array of strings or nulls",
        ),
        (
            r.JobReport,
            {"status": "exploded"},
            "job report: field 'status' must be one of running, succeeded, failed, stopped",
        ),
        (
            r.EnrolRequest,
            {"join_token": "j", "name": "n", "address": "a", "slots": 1, "labels": {"gpu": 1}},
            "enrolment request: field 'labels' must map names to strings",
        ),
        (r.Heartbeat, {"protocol": "1"}, "heartbeat: field 'protocol' must be an integer"),
    ],
)
def test_a_malformed_body_is_refused_naming_it_and_the_field(kind, data, message):
    with pytest.raises(ProtocolError) as refused:
        kind.from_dict(data)
    assert str(refused.value).startswith(message)


def test_a_report_with_an_unknown_status_cannot_be_built():
    with pytest.raises(ProtocolError, match="job report: status must be one of"):
        r.JobReport(status="done")
    with pytest.raises(ProtocolError, match="worker status: state must be one of"):
        r.WorkerStatus(rank=1, state="crashed")
