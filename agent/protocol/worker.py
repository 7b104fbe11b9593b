"""The lines between a node agent and the training workers it spawns (docs/protocols.md,
"Agent ⇄ worker").

One JSON object per line, over the worker's Unix socket (no prefix) or its stdio
(:data:`~agent.protocol.PREFIX` before each line on stdout). Every line but ``metrics``
and ``detached`` from a worker carries a number ``n`` that the agent acknowledges; ``n``
belongs to the channel, not to the frame (:func:`encode`, :func:`line_number`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.protocol import PREFIX, ProtocolError
from agent.protocol import vocabulary as v
from agent.protocol.base import Fields, Frame, Message, drop_none, frame_types, parse_frame


class Line(Frame):
    """A line on the agent ⇄ worker link."""

    KIND = "line"


@dataclass(frozen=True)
class MetricPoint(Message):
    """One value of one series at a step: a whole-job series, or one worker's (``rank``).
    The agent adds ``job`` before posting it (:class:`agent.protocol.rest.MetricBatch`)."""

    WHAT = "metric point"
    name: str
    step: int
    value: float
    time: float  # Unix time, seconds
    rank: int | None = None
    job: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return drop_none(
            {
                "name": self.name,
                "step": self.step,
                "value": self.value,
                "time": self.time,
                "rank": self.rank,
                "job": self.job,
            },
            "rank",
            "job",
        )

    @classmethod
    def read(cls, f: Fields) -> MetricPoint:
        return cls(
            name=f.text("name"),
            step=f.integer("step"),
            value=f.number("value"),
            time=f.number("time"),
            rank=f.integer_or_none("rank"),
            job=f.integer_or_none("job"),
        )


# -- worker → agent -------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricsLine(Line):
    TYPE = "metrics"
    points: tuple[MetricPoint, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "points": [p.to_dict() for p in self.points]}

    @classmethod
    def read(cls, f: Fields) -> MetricsLine:
        return cls(points=f.records("points", MetricPoint))


@dataclass(frozen=True)
class AppliedLine(Line):
    """The worker applied command ``id`` (number ``seq``) at ``step``; ``lr``: the learning
    rate in force afterwards."""

    TYPE = "applied"
    id: int
    seq: int
    step: int
    lr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return drop_none(
            {"type": self.TYPE, "id": self.id, "seq": self.seq, "step": self.step, "lr": self.lr},
            "lr",
        )

    @classmethod
    def read(cls, f: Fields) -> AppliedLine:
        return cls(
            id=f.integer("id"),
            seq=f.integer("seq"),
            step=f.integer("step"),
            lr=f.number_or_none("lr"),
        )


@dataclass(frozen=True)
class FailedLine(Line):
    TYPE = "failed"
    id: int
    seq: int
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "id": self.id, "seq": self.seq, "error": self.error}

    @classmethod
    def read(cls, f: Fields) -> FailedLine:
        return cls(id=f.integer("id"), seq=f.integer("seq"), error=f.text("error"))


@dataclass(frozen=True)
class StandbyLine(Line):
    """A warm standby built its model and waits for a version that lists ``address``."""

    TYPE = v.STANDBY
    address: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "address": self.address}

    @classmethod
    def read(cls, f: Fields) -> StandbyLine:
        return cls(address=f.text("address"))


@dataclass(frozen=True)
class RescaledLine(Line):
    """The worker trains in cluster ``version`` as ``rank`` of ``size`` from ``step`` on;
    training stood still ``paused_s`` seconds for the change."""

    TYPE = v.RESCALED
    version: int
    rank: int
    size: int
    step: int
    paused_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "version": self.version,
            "rank": self.rank,
            "size": self.size,
            "step": self.step,
            "paused_s": self.paused_s,
        }

    @classmethod
    def read(cls, f: Fields) -> RescaledLine:
        return cls(
            version=f.integer("version"),
            rank=f.integer("rank"),
            size=f.integer("size"),
            step=f.integer("step"),
            paused_s=f.number("paused_s"),
        )


@dataclass(frozen=True)
class LeftLine(Line):
    """Cluster ``version`` does not list the worker: it left at ``step`` and exits with 0.
    (``step`` is None when the agent reports a leaving it only saw as a clean exit.)"""

    TYPE = v.LEFT
    version: int
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return drop_none({"type": self.TYPE, "version": self.version, "step": self.step}, "step")

    @classmethod
    def read(cls, f: Fields) -> LeftLine:
        return cls(version=f.integer("version"), step=f.integer_or_none("step"))


@dataclass(frozen=True)
class PeerFailedLine(Line):
    """A collective of cluster ``version`` failed; the worker waits for a newer version."""

    TYPE = v.PEER_FAILED
    version: int
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "version": self.version, "error": self.error}

    @classmethod
    def read(cls, f: Fields) -> PeerFailedLine:
        return cls(version=f.integer("version"), error=f.text("error"))


@dataclass(frozen=True)
class ExitLine(Line):
    """The worker's last line (over the socket): how its process ends."""

    TYPE = "exit"
    code: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "code": self.code}

    @classmethod
    def read(cls, f: Fields) -> ExitLine:
        return cls(code=f.integer("code"))


@dataclass(frozen=True)
class DroppedLine(Line):
    """``metrics`` metric lines were dropped while no agent was connected."""

    TYPE = "dropped"
    metrics: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "metrics": self.metrics}

    @classmethod
    def read(cls, f: Fields) -> DroppedLine:
        return cls(metrics=f.integer("metrics"))


@dataclass(frozen=True)
class DetachedLine(Line):
    """The last line a worker writes to an agent that asked it to let go (:class:`DetachLine`)."""

    TYPE = "detached"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE}

    @classmethod
    def read(cls, f: Fields) -> DetachedLine:
        return cls()


# -- agent → worker -------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandLine(Line):
    """Apply ``action`` (a :data:`~agent.protocol.vocabulary.COMMAND_TYPES` name) with
    ``payload``; every worker applies command ``seq`` at the same step."""

    TYPE = "command"
    id: int
    seq: int
    action: str
    payload: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "id": self.id,
            "seq": self.seq,
            "action": self.action,
            "payload": self.payload,
        }

    @classmethod
    def read(cls, f: Fields) -> CommandLine:
        return cls(
            id=f.integer("id"),
            seq=f.integer("seq"),
            action=f.text("action"),
            payload=f.obj("payload") if f.data.get("payload") is not None else {},
        )


@dataclass(frozen=True)
class ClusterLine(Line):
    """Cluster ``version`` has these ``members`` (host:port, in rank order)."""

    TYPE = "cluster"
    version: int
    members: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "version": self.version, "members": list(self.members)}

    @classmethod
    def read(cls, f: Fields) -> ClusterLine:
        members = f.texts("members")
        if not members or not all(members):
            raise ProtocolError(f"{f.what}: field 'members' must list at least one host:port")
        return cls(version=f.integer("version"), members=members)


@dataclass(frozen=True)
class AckLine(Line):
    """The agent handled the worker's numbered lines up to ``n``."""

    TYPE = "ack"
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "n": self.n}

    @classmethod
    def read(cls, f: Fields) -> AckLine:
        return cls(n=f.integer("n"))


@dataclass(frozen=True)
class DetachLine(Line):
    """The agent exits on purpose: the worker answers :class:`DetachedLine` and buffers."""

    TYPE = "detach"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE}

    @classmethod
    def read(cls, f: Fields) -> DetachLine:
        return cls()


FromWorker = (
    MetricsLine
    | AppliedLine
    | FailedLine
    | StandbyLine
    | RescaledLine
    | LeftLine
    | PeerFailedLine
    | ExitLine
    | DroppedLine
    | DetachedLine
)
ToWorker = CommandLine | ClusterLine | AckLine | DetachLine
# What a worker says about its membership (relayed upstream as ``worker`` frames).
MembershipLine = StandbyLine | RescaledLine | LeftLine | PeerFailedLine

_FROM_WORKER: dict[str, type[FromWorker]] = frame_types(
    MetricsLine,
    AppliedLine,
    FailedLine,
    StandbyLine,
    RescaledLine,
    LeftLine,
    PeerFailedLine,
    ExitLine,
    DroppedLine,
    DetachedLine,
)
_TO_WORKER: dict[str, type[ToWorker]] = frame_types(CommandLine, ClusterLine, AckLine, DetachLine)


def parse_from_worker(data: object) -> FromWorker:
    """A decoded line a worker sent, as its typed frame (``n`` is ignored: :func:`line_number`)."""
    return parse_frame(data, _FROM_WORKER, "a line from a worker")


def parse_to_worker(data: object) -> ToWorker:
    """A decoded line an agent sent to a worker, as its typed frame."""
    return parse_frame(data, _TO_WORKER, "a line to a worker")


def encode(frame: Frame, n: int | None = None) -> bytes:
    """The frame as one line for the socket, numbered ``n`` when given."""
    data = frame.to_dict()
    if n is not None:
        data["n"] = n
    return (json.dumps(data, separators=(",", ":")) + "\n").encode()


def line_number(data: Mapping[str, Any]) -> int | None:
    """The number ``n`` of a decoded line from a worker (None for unnumbered lines)."""
    n = data.get("n")
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ProtocolError(
            f"a line from a worker: field 'n' must be a positive integer, got {n!r}"
        )
    return n


def stdio_line(frame: Frame) -> str:
    """The frame as a worker writes it on stdout (without the newline)."""
    return PREFIX + json.dumps(frame.to_dict(), separators=(",", ":"))


def read_stdio_line(text: str) -> dict[str, Any] | None:
    """The decoded object of a protocol line from a worker's stdout; None for any other
    output (ordinary log lines)."""
    if not text.startswith(PREFIX):
        return None
    data = json.loads(text[len(PREFIX) :])
    if not isinstance(data, dict):
        raise ProtocolError(f"a line from a worker must be a JSON object, got {text[:80]!r}")
    return data


@dataclass(frozen=True)
class WorkerParams(Message):
    """The job's parameters a worker starts with (``ADAPTRAIN_PARAMS``, JSON)."""

    WHAT = "worker parameters"
    hyperparameters: dict[str, Any]
    batch_size: int
    lr: float
    strategy: str
    topology: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "hyperparameters": self.hyperparameters,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "strategy": self.strategy,
            "topology": self.topology,
        }

    @classmethod
    def read(cls, f: Fields) -> WorkerParams:
        return cls(
            hyperparameters=f.obj("hyperparameters"),
            batch_size=f.integer("batch_size"),
            lr=f.number("lr"),
            strategy=f.text("strategy"),
            topology=f.text("topology"),
        )
