"""The JSON bodies of the agent's REST calls under ``/api/v1/agent/`` (docs/protocols.md,
"Control plane ⇄ agent"): enrolment, heartbeat, metric batches, worker ports (the
rendezvous), the cluster spec, job reports and log batches. Each request and reply is one
:class:`~agent.protocol.base.Message`; the agent authenticates with
``Authorization: Node <credential>`` (enrolment with the join token in the body).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.protocol import ProtocolError
from agent.protocol import vocabulary as v
from agent.protocol.base import Fields, Message
from agent.protocol.worker import MetricPoint

# The ``code`` of the control plane's refusals the agent acts on (the reply is the
# control plane's error shape, ``{"code", "message", "details"}``): it stops, with the
# message, instead of trying again, since an admin must act first.
ERROR_NODE_REVOKED = "node_revoked"  # 401: an admin revoked this node's credential
ERROR_NODE_UNKNOWN = "node_unknown"  # 401: no node has this credential (deleted, or never)
ERROR_PROTOCOL_INCOMPATIBLE = "incompatible_protocol"  # 400: upgrade the agent (or the server)
# Enrolment refusals: the join token is unknown, revoked, expired or used up (401), or the
# name belongs to an enrolled node (409).
ERROR_JOIN_TOKEN_UNKNOWN = "join_token_unknown"
ERROR_JOIN_TOKEN_REVOKED = "join_token_revoked"
ERROR_JOIN_TOKEN_EXPIRED = "join_token_expired"
ERROR_JOIN_TOKEN_USED_UP = "join_token_used_up"
ERROR_NODE_NAME_TAKEN = "node_name_taken"


def _versions(agent_version: str, protocol: int | None) -> dict[str, Any]:
    """The agent's version fields, present only when known (an agent from before them
    sends neither, and speaks protocol 1)."""
    data: dict[str, Any] = {}
    if agent_version:
        data["agent_version"] = agent_version
    if protocol is not None:
        data["protocol"] = protocol
    return data


def _code(code: tuple[str, ...] | None) -> dict[str, Any]:
    return {} if code is None else {"code": list(code)}


def _read_code(f: Fields) -> tuple[str, ...] | None:
    """The ``code`` field: kinds of code from :data:`vocabulary.CODE_KINDS`, or None."""
    if f.data.get("code") is None:
        return None
    kinds = f.texts("code")
    unknown = [k for k in kinds if k not in v.CODE_KINDS]
    if unknown:
        raise ProtocolError(
            f"{f.what}: field 'code' names {unknown!r}; kinds of code are {', '.join(v.CODE_KINDS)}"
        )
    return kinds


@dataclass(frozen=True)
class EnrolRequest(Message):
    """``POST agent/enrol/``: exchange a join token for this node's credential; the agent
    says which package version it is and which protocol it speaks."""

    WHAT = "enrolment request"
    join_token: str
    name: str
    address: str  # the host the node's workers listen on
    slots: int
    labels: dict[str, str] = field(default_factory=dict)
    agent_version: str = ""
    protocol: int | None = None
    # The kinds of code the node runs (AGENT_CODE; vocabulary.CODE_KINDS); None: not said.
    code: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "join_token": self.join_token,
            "name": self.name,
            "address": self.address,
            "slots": self.slots,
            "labels": self.labels,
            **_versions(self.agent_version, self.protocol),
            **_code(self.code),
        }

    @classmethod
    def read(cls, f: Fields) -> EnrolRequest:
        labels = f.obj("labels") if f.data.get("labels") is not None else {}
        if not all(isinstance(value, str) for value in labels.values()):
            raise ProtocolError(f"{f.what}: field 'labels' must map names to strings")
        return cls(
            join_token=f.text("join_token"),
            name=f.text("name"),
            address=f.text("address"),
            slots=f.integer("slots"),
            labels=labels,
            agent_version=f.text_or_none("agent_version") or "",
            protocol=f.integer_or_none("protocol"),
            code=_read_code(f),
        )


@dataclass(frozen=True)
class Enrolment(Message):
    """The reply to an enrolment: the node's id and name, and its credential (shown once)."""

    WHAT = "enrolment"
    node: int
    name: str
    credential: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "name": self.name, "credential": self.credential}

    @classmethod
    def read(cls, f: Fields) -> Enrolment:
        return cls(node=f.integer("node"), name=f.text("name"), credential=f.text("credential"))


@dataclass(frozen=True)
class GpuStat(Message):
    """One GPU of the node as a heartbeat reports it: what it is and how busy it is now
    (None where the driver does not say). ``job``/``rank``: the worker that owns it."""

    WHAT = "GPU status"
    uuid: str
    name: str = ""
    memory_total_mib: float | None = None
    utilization_pct: float | None = None
    memory_used_mib: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    job: int | None = None
    rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "memory_total_mib": self.memory_total_mib,
            "utilization_pct": self.utilization_pct,
            "memory_used_mib": self.memory_used_mib,
            "temperature_c": self.temperature_c,
            "power_w": self.power_w,
            "job": self.job,
            "rank": self.rank,
        }

    @classmethod
    def read(cls, f: Fields) -> GpuStat:
        return cls(
            uuid=f.text("uuid"),
            name=f.text_or_none("name") or "",
            memory_total_mib=f.number_or_none("memory_total_mib"),
            utilization_pct=f.number_or_none("utilization_pct"),
            memory_used_mib=f.number_or_none("memory_used_mib"),
            temperature_c=f.number_or_none("temperature_c"),
            power_w=f.number_or_none("power_w"),
            job=f.integer_or_none("job"),
            rank=f.integer_or_none("rank"),
        )


@dataclass(frozen=True)
class Heartbeat(Message):
    """``POST agent/heartbeat/``; ``jobs``: the jobs whose workers the agent runs (None:
    not said, as when a stored credential is checked); the agent's package version and
    protocol, as at enrolment."""

    WHAT = "heartbeat"
    jobs: tuple[int, ...] | None = None
    agent_version: str = ""
    protocol: int | None = None
    code: tuple[str, ...] | None = None  # as at enrolment (AGENT_CODE may have changed)
    gpus: tuple[GpuStat, ...] | None = None  # the node's GPUs now (None: not said)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {} if self.jobs is None else {"jobs": list(self.jobs)}
        if self.gpus is not None:
            data["gpus"] = [g.to_dict() for g in self.gpus]
        return {**data, **_versions(self.agent_version, self.protocol), **_code(self.code)}

    @classmethod
    def read(cls, f: Fields) -> Heartbeat:
        return cls(
            jobs=None if f.data.get("jobs") is None else f.integers("jobs"),
            agent_version=f.text_or_none("agent_version") or "",
            protocol=f.integer_or_none("protocol"),
            code=_read_code(f),
            gpus=None if f.data.get("gpus") is None else f.records("gpus", GpuStat),
        )


@dataclass(frozen=True)
class Goodbye(Message):
    """``POST agent/goodbye/``: the agent stops on purpose (SIGTERM, SIGINT), after its
    final reports. ``detached``: jobs whose workers it leaves running for the next agent
    to re-attach (AGENT_ON_EXIT=detach); empty when it stopped them."""

    WHAT = "goodbye"
    reason: str = ""
    detached: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "detached": list(self.detached)}

    @classmethod
    def read(cls, f: Fields) -> Goodbye:
        return cls(
            reason=f.text_or_none("reason") or "",
            detached=() if f.data.get("detached") is None else f.integers("detached"),
        )


@dataclass(frozen=True)
class HeartbeatReply(Message):
    """``release``: jobs among those listed whose workers the agent should end."""

    WHAT = "heartbeat reply"
    ok: bool
    heartbeat_timeout_s: float
    release: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "heartbeat_timeout_s": self.heartbeat_timeout_s,
            "release": list(self.release),
        }

    @classmethod
    def read(cls, f: Fields) -> HeartbeatReply:
        return cls(
            ok=f.flag("ok"),
            heartbeat_timeout_s=f.number("heartbeat_timeout_s"),
            release=() if f.data.get("release") is None else f.integers("release"),
        )


@dataclass(frozen=True)
class MetricBatch(Message):
    """``POST agent/metrics/``: points (each with its ``job``); ``batch_id`` makes a retry
    of a stored batch count once."""

    WHAT = "metric batch"
    batch_id: str
    points: tuple[MetricPoint, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "points": [p.to_dict() for p in self.points]}

    @classmethod
    def read(cls, f: Fields) -> MetricBatch:
        return cls(batch_id=f.text("batch_id"), points=f.records("points", MetricPoint))


@dataclass(frozen=True)
class MetricBatchReply(Message):
    WHAT = "metric batch reply"
    stored: int  # points stored by this call (0 for a batch stored before)

    def to_dict(self) -> dict[str, Any]:
        return {"stored": self.stored}

    @classmethod
    def read(cls, f: Fields) -> MetricBatchReply:
        return cls(stored=f.integer("stored"))


@dataclass(frozen=True)
class WorkerPort(Message):
    """The port worker ``rank`` (its number in the job) listens on, on the agent's host."""

    WHAT = "worker port"
    rank: int
    port: int

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "port": self.port}

    @classmethod
    def read(cls, f: Fields) -> WorkerPort:
        return cls(rank=f.integer("rank"), port=f.integer("port"))


@dataclass(frozen=True)
class WorkersRegistration(Message):
    """``POST agent/jobs/{id}/workers/``: this node's workers' ports (the rendezvous);
    answered with the :class:`ClusterSpec`."""

    WHAT = "workers registration"
    workers: tuple[WorkerPort, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"workers": [w.to_dict() for w in self.workers]}

    @classmethod
    def read(cls, f: Fields) -> WorkersRegistration:
        return cls(workers=f.records("workers", WorkerPort))


@dataclass(frozen=True)
class ClusterSpec(Message):
    """``GET agent/jobs/{id}/cluster/``: the job's latest cluster version; before version
    1 (``complete`` false) the addresses registered so far (null for the others)."""

    WHAT = "cluster spec"
    job: int
    version: int
    world_size: int
    complete: bool
    members: tuple[str | None, ...]
    workers_min: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "version": self.version,
            "world_size": self.world_size,
            "complete": self.complete,
            "members": list(self.members),
            "workers_min": self.workers_min,
        }

    @classmethod
    def read(cls, f: Fields) -> ClusterSpec:
        return cls(
            job=f.integer("job"),
            version=f.integer("version"),
            world_size=f.integer("world_size"),
            complete=f.flag("complete"),
            members=f.texts_or_nulls("members"),
            workers_min=f.integer("workers_min"),
        )


@dataclass(frozen=True)
class WorkerStatus(Message):
    """One worker in a job report: ``running`` (with its ``port``), ``left``, or
    ``failed`` (with its exit ``code``, None when unknown, and the ``error`` from its log)."""

    WHAT = "worker status"
    rank: int
    state: str
    port: int | None = None
    code: int | None = None
    error: str = ""

    def __post_init__(self) -> None:
        if self.state not in v.WORKER_REPORT_STATES:
            raise ProtocolError(
                f"{self.WHAT}: state must be one of {', '.join(v.WORKER_REPORT_STATES)}, "
                f"got {self.state!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        if self.state == v.RUNNING:
            return {"rank": self.rank, "port": self.port, "state": self.state}
        if self.state == v.FAILED:
            return {"rank": self.rank, "state": self.state, "code": self.code, "error": self.error}
        return {"rank": self.rank, "state": self.state}

    @classmethod
    def read(cls, f: Fields) -> WorkerStatus:
        return cls(
            rank=f.integer("rank"),
            state=f.one_of("state", v.WORKER_REPORT_STATES),
            port=f.integer_or_none("port"),
            code=f.integer_or_none("code"),
            error=f.text_or_none("error") or "",
        )


@dataclass(frozen=True)
class JobReport(Message):
    """``POST agent/jobs/{id}/report/``: this node's part of the job is ``status``; with
    ``running`` the workers' ports, with ``stopped``/``succeeded`` what became of workers
    that left or died while the job went on."""

    WHAT = "job report"
    status: str
    reason: str = ""
    workers: tuple[WorkerStatus, ...] | None = None

    def __post_init__(self) -> None:
        if self.status not in v.JOB_REPORT_STATUSES:
            raise ProtocolError(
                f"{self.WHAT}: status must be one of {', '.join(v.JOB_REPORT_STATUSES)}, "
                f"got {self.status!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": self.status, "reason": self.reason}
        if self.workers is not None:
            data["workers"] = [w.to_dict() for w in self.workers]
        return data

    @classmethod
    def read(cls, f: Fields) -> JobReport:
        return cls(
            status=f.one_of("status", v.JOB_REPORT_STATUSES),
            reason=f.text_or_none("reason") or "",
            workers=None if f.data.get("workers") is None else f.records("workers", WorkerStatus),
        )


@dataclass(frozen=True)
class LogLine(Message):
    """One line a worker wrote: ``rank`` (its number in the job), ``stream`` (``stdout``
    or ``stderr``), ``time`` (unix seconds, when its node read it from the worker) and
    ``text`` (without the line break; a line too long was cut, and says so)."""

    WHAT = "log line"
    rank: int
    stream: str
    time: float
    text: str

    def __post_init__(self) -> None:
        if self.stream not in v.LOG_STREAMS:
            raise ProtocolError(
                f"{self.WHAT}: stream must be one of {', '.join(v.LOG_STREAMS)}, "
                f"got {self.stream!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "stream": self.stream, "time": self.time, "text": self.text}

    @classmethod
    def read(cls, f: Fields) -> LogLine:
        return cls(
            rank=f.integer("rank"),
            stream=f.one_of("stream", v.LOG_STREAMS),
            time=f.number("time"),
            text=f.text("text"),
        )


@dataclass(frozen=True)
class LogBatch(Message):
    """``POST agent/logs/``: lines of one job's workers on this node, each worker's in the
    order it wrote them; ``batch_id`` makes a retry of a stored batch count once."""

    WHAT = "log batch"
    batch_id: str
    job: int
    lines: tuple[LogLine, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "job": self.job,
            "lines": [line.to_dict() for line in self.lines],
        }

    @classmethod
    def read(cls, f: Fields) -> LogBatch:
        return cls(
            batch_id=f.text("batch_id"), job=f.integer("job"), lines=f.records("lines", LogLine)
        )


@dataclass(frozen=True)
class LogBatchReply(Message):
    WHAT = "log batch reply"
    stored: int  # lines stored by this call (0 for a batch stored before)

    def to_dict(self) -> dict[str, Any]:
        return {"stored": self.stored}

    @classmethod
    def read(cls, f: Fields) -> LogBatchReply:
        return cls(stored=f.integer("stored"))
