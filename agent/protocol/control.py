"""The frames between the control plane and a node agent on the agent's WebSocket
``/ws/agent/`` (docs/protocols.md, "Control plane ⇄ agent"), and the typed payloads of
the commands the agent itself carries out (``start``, ``scale_workers``, ``stop``).

Commands carry an id (acknowledged by :class:`AckFrame`, applied once by id); the
agent's reports (:class:`AppliedFrame`, :class:`FailedFrame`, :class:`WorkerFrame`)
carry a ``ref`` that the control plane confirms with :class:`ReceivedFrame`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from agent.protocol import vocabulary as v
from agent.protocol.base import Fields, Frame, Message, drop_none, frame_types, parse_frame
from agent.protocol.worker import (
    ClusterLine,
    CommandLine,
    LeftLine,
    MembershipLine,
    PeerFailedLine,
    RescaledLine,
    StandbyLine,
    WorkerParams,
)

# -- opening and closing the channel -----------------------------------------------------------

# Besides its credential (``Authorization: Node <credential>``), the agent names the
# protocol it speaks and its package version when it opens /ws/agent/ (an agent from
# before these headers speaks protocol 1).
HEADER_PROTOCOL = "X-Adaptrain-Protocol"
HEADER_AGENT_VERSION = "X-Adaptrain-Agent-Version"
# Close codes after which the agent stops instead of reconnecting: an admin must act.
CLOSE_NODE_REVOKED = 4410  # the node's credential was revoked
CLOSE_PROTOCOL_INCOMPATIBLE = 4426  # the control plane does not speak the agent's protocol

# -- control plane → agent ------------------------------------------------------------------


@dataclass(frozen=True)
class CommandFrame(Frame):
    """Command ``id`` of ``job``, number ``seq`` in the job's sequence (the same on every
    node): ``action`` with ``payload`` (typed for ``start``, ``scale_workers`` and ``stop``:
    :meth:`start_payload`, :meth:`scale_payload`, :meth:`stop_payload`)."""

    TYPE = "command"
    id: int
    job: int
    seq: int
    action: str
    payload: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "id": self.id,
            "job": self.job,
            "seq": self.seq,
            "action": self.action,
            "payload": self.payload,
        }

    @classmethod
    def read(cls, f: Fields) -> CommandFrame:
        return cls(
            id=f.integer("id"),
            job=f.integer("job"),
            seq=f.integer("seq"),
            action=f.text("action"),
            payload=f.obj("payload") if f.data.get("payload") is not None else {},
        )

    def for_worker(self) -> CommandLine:
        """The line the job's workers are sent."""
        return CommandLine(id=self.id, seq=self.seq, action=self.action, payload=self.payload)

    def _payload_fields(self) -> Fields:
        return Fields(self.payload, f"payload of {self.action!r} command {self.id}")

    def typed_payload(self) -> StartPayload | ScalePayload | StopPayload | None:
        """The payload read as its action's type; None for an action whose payload is only
        a ``value`` for the workers."""
        kind = _TYPED_PAYLOADS.get(self.action)
        return None if kind is None else kind.read(self._payload_fields())

    def start_payload(self) -> StartPayload:
        return StartPayload.read(self._payload_fields())

    def scale_payload(self) -> ScalePayload:
        return ScalePayload.read(self._payload_fields())

    def stop_payload(self) -> StopPayload:
        return StopPayload.read(self._payload_fields())


@dataclass(frozen=True)
class StartPayload(Message):
    """What a ``start`` command tells a node: the job's parameters, its initial size
    (``world_size``) and the initial workers placed on this node (``ranks``)."""

    WHAT = "start payload"
    job: int
    entrypoint: str  # module run with python -m
    hyperparameters: dict[str, Any]
    batch_size: int
    lr: float
    strategy: str
    topology: str
    world_size: int
    cluster_version: int
    workers_min: int
    ranks: tuple[int, ...]
    bundle: str | None = None  # sha256 of the code bundle the workers run in (None: none)
    # the run's fabric secret (hex): added to the frame when pushed, never stored in the
    # command row; workers prove membership with it (docs/security.md). Not in repr.
    fabric_secret: str | None = field(default=None, repr=False)

    @property
    def params(self) -> WorkerParams:
        return WorkerParams(
            hyperparameters=self.hyperparameters,
            batch_size=self.batch_size,
            lr=self.lr,
            strategy=self.strategy,
            topology=self.topology,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "entrypoint": self.entrypoint,
            **self.params.to_dict(),
            "world_size": self.world_size,
            "cluster_version": self.cluster_version,
            "workers_min": self.workers_min,
            "ranks": list(self.ranks),
            **({"bundle": self.bundle} if self.bundle else {}),
            **({"fabric_secret": self.fabric_secret} if self.fabric_secret else {}),
        }

    @classmethod
    def read(cls, f: Fields) -> StartPayload:
        params = WorkerParams.read(f)
        return cls(
            job=f.integer("job"),
            entrypoint=f.text("entrypoint"),
            hyperparameters=params.hyperparameters,
            batch_size=params.batch_size,
            lr=params.lr,
            strategy=params.strategy,
            topology=params.topology,
            world_size=f.integer("world_size"),
            cluster_version=f.integer("cluster_version"),
            workers_min=f.integer("workers_min"),
            ranks=f.integers("ranks"),
            bundle=f.text_or_none("bundle"),
            fabric_secret=f.text_or_none("fabric_secret"),
        )


@dataclass(frozen=True)
class JoinerSpec(Message):
    """A joiner placed on this node: its number in the job and its rank in the version
    it will join."""

    WHAT = "joiner"
    rank: int
    cluster_rank: int

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "cluster_rank": self.cluster_rank}

    @classmethod
    def read(cls, f: Fields) -> JoinerSpec:
        return cls(rank=f.integer("rank"), cluster_rank=f.integer("cluster_rank"))


@dataclass(frozen=True)
class JoinPayload(Message):
    """The warm standbys a grow places on this node (``workers``), to join after cluster
    version ``cluster_version`` (``members``), with the job's parameters."""

    WHAT = "join payload"
    cluster_version: int
    members: tuple[str, ...]
    workers_min: int
    entrypoint: str
    hyperparameters: dict[str, Any]
    batch_size: int
    lr: float
    strategy: str
    topology: str
    workers: tuple[JoinerSpec, ...]
    bundle: str | None = None  # as in StartPayload
    fabric_secret: str | None = field(default=None, repr=False)  # as in StartPayload

    @property
    def params(self) -> WorkerParams:
        return WorkerParams(
            hyperparameters=self.hyperparameters,
            batch_size=self.batch_size,
            lr=self.lr,
            strategy=self.strategy,
            topology=self.topology,
        )

    def joiners_start(self, job_id: int) -> StartPayload:
        """The start parameters of a group begun on a node for a grow's joiners only."""
        return StartPayload(
            job=job_id,
            entrypoint=self.entrypoint,
            hyperparameters=self.hyperparameters,
            batch_size=self.batch_size,
            lr=self.lr,
            strategy=self.strategy,
            topology=self.topology,
            world_size=0,
            cluster_version=self.cluster_version,
            workers_min=self.workers_min,
            ranks=(),
            bundle=self.bundle,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster_version": self.cluster_version,
            "members": list(self.members),
            "workers_min": self.workers_min,
            "entrypoint": self.entrypoint,
            **self.params.to_dict(),
            "workers": [w.to_dict() for w in self.workers],
            **({"bundle": self.bundle} if self.bundle else {}),
            **({"fabric_secret": self.fabric_secret} if self.fabric_secret else {}),
        }

    @classmethod
    def read(cls, f: Fields) -> JoinPayload:
        params = WorkerParams.read(f)
        return cls(
            cluster_version=f.integer("cluster_version"),
            members=f.texts("members"),
            workers_min=f.integer("workers_min"),
            entrypoint=f.text("entrypoint"),
            hyperparameters=params.hyperparameters,
            batch_size=params.batch_size,
            lr=params.lr,
            strategy=params.strategy,
            topology=params.topology,
            workers=f.records("workers", JoinerSpec),
            bundle=f.text_or_none("bundle"),
            fabric_secret=f.text_or_none("fabric_secret"),
        )


@dataclass(frozen=True)
class ScalePayload(Message):
    """``scale_workers`` to ``value`` workers; ``join`` only for a node that starts joiners."""

    WHAT = "scale_workers payload"
    value: int
    join: JoinPayload | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"value": self.value}
        if self.join is not None:
            data["join"] = self.join.to_dict()
        return data

    @classmethod
    def read(cls, f: Fields) -> ScalePayload:
        return cls(value=f.integer("value"), join=f.record_or_none("join", JoinPayload))


@dataclass(frozen=True)
class StopPayload(Message):
    """A ``stop``: a clean stop at an agreed step (no field), ``terminate`` (the job failed:
    kill its workers), or the end of the standbys listed in ``joiners`` (a grow given up)."""

    WHAT = "stop payload"
    terminate: bool = False
    joiners: tuple[int, ...] | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.terminate:
            data["terminate"] = True
        if self.joiners is not None:
            data["joiners"] = list(self.joiners)
        if self.reason is not None:
            data["reason"] = self.reason
        return data

    @classmethod
    def read(cls, f: Fields) -> StopPayload:
        return cls(
            terminate=f.flag("terminate"),
            joiners=None if f.data.get("joiners") is None else f.integers("joiners"),
            reason=f.text_or_none("reason"),
        )


_TYPED_PAYLOADS: dict[str, type[StartPayload | ScalePayload | StopPayload]] = {
    v.START: StartPayload,
    v.SCALE_WORKERS: ScalePayload,
    v.STOP: StopPayload,
}


@dataclass(frozen=True)
class ClusterFrame(Frame):
    """Cluster ``version`` of ``job``: ``members`` (host:port in rank order) are the
    workers numbered ``workers``; the job needs at least ``workers_min``. Not acknowledged:
    the latest version is sent again on every connection."""

    TYPE = "cluster"
    job: int
    version: int
    members: tuple[str, ...]
    workers: tuple[int, ...]
    workers_min: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "job": self.job,
            "version": self.version,
            "members": list(self.members),
            "workers": list(self.workers),
            "workers_min": self.workers_min,
        }

    @classmethod
    def read(cls, f: Fields) -> ClusterFrame:
        return cls(
            job=f.integer("job"),
            version=f.integer("version"),
            members=f.texts("members"),
            workers=f.integers("workers"),
            workers_min=f.integer("workers_min"),
        )

    def for_worker(self) -> ClusterLine:
        return ClusterLine(version=self.version, members=self.members)


@dataclass(frozen=True)
class ReceivedFrame(Frame):
    """The control plane handled the agent's report ``ref``: the agent forgets it."""

    TYPE = "received"
    ref: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "ref": self.ref}

    @classmethod
    def read(cls, f: Fields) -> ReceivedFrame:
        return cls(ref=f.text("ref"))


@dataclass(frozen=True)
class ErrorFrame(Frame):
    """The control plane refused a frame (``id``: the command, ``job``: the job it named)."""

    TYPE = "error"
    message: str
    id: int | None = None
    job: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return drop_none(
            {"type": self.TYPE, "id": self.id, "job": self.job, "message": self.message},
            "id",
            "job",
        )

    @classmethod
    def read(cls, f: Fields) -> ErrorFrame:
        return cls(
            message=f.text("message"), id=f.integer_or_none("id"), job=f.integer_or_none("job")
        )


# -- agent → control plane ------------------------------------------------------------------


@dataclass(frozen=True)
class AckFrame(Frame):
    """The agent took command ``id`` on (sent on every delivery, applied once)."""

    TYPE = "ack"
    id: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "id": self.id}

    @classmethod
    def read(cls, f: Fields) -> AckFrame:
        return cls(id=f.integer("id"))


@dataclass(frozen=True)
class AppliedFrame(Frame):
    """This node's workers applied command ``id`` at ``step`` (None: carried out by the
    agent, no step); ``lr``: the learning rate they use afterwards."""

    TYPE = "applied"
    id: int
    step: int | None
    lr: float | None = None
    ref: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return drop_none(
            {"type": self.TYPE, "id": self.id, "step": self.step, "lr": self.lr, "ref": self.ref},
            "lr",
            "ref",
        )

    @classmethod
    def read(cls, f: Fields) -> AppliedFrame:
        return cls(
            id=f.integer("id"),
            step=f.integer_or_none("step"),
            lr=f.number_or_none("lr"),
            ref=f.text_or_none("ref"),
        )


@dataclass(frozen=True)
class FailedFrame(Frame):
    TYPE = "failed"
    id: int
    error: str
    ref: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return drop_none(
            {"type": self.TYPE, "id": self.id, "error": self.error, "ref": self.ref}, "ref"
        )

    @classmethod
    def read(cls, f: Fields) -> FailedFrame:
        return cls(id=f.integer("id"), error=f.text("error"), ref=f.text_or_none("ref"))


@dataclass(frozen=True)
class ExitedEvent(Frame):
    """A worker died while its job could go on without it (the agent saw it): exit
    ``code`` (None: unknown) and the ``error`` from its log."""

    TYPE = v.EXITED
    KIND = "event"
    code: int | None
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "code": self.code, "error": self.error}

    @classmethod
    def read(cls, f: Fields) -> ExitedEvent:
        return cls(code=f.integer_or_none("code"), error=f.text("error"))


WorkerEvent = MembershipLine | ExitedEvent
_WORKER_EVENTS: dict[str, type[WorkerEvent]] = frame_types(
    StandbyLine, RescaledLine, LeftLine, PeerFailedLine, ExitedEvent
)


@dataclass(frozen=True)
class WorkerFrame(Frame):
    """What worker ``rank`` (its number in the job) of ``job`` said or did about its
    membership: the ``event`` line's fields, flat, with the worker's rank in the cluster
    version renamed ``cluster_rank``."""

    TYPE = "worker"
    job: int
    rank: int
    event: WorkerEvent
    ref: str | None = None

    def to_dict(self) -> dict[str, Any]:
        details = self.event.to_dict()
        del details["type"]
        if "rank" in details:
            details["cluster_rank"] = details.pop("rank")
        return drop_none(
            {
                "type": self.TYPE,
                "job": self.job,
                "rank": self.rank,
                "event": self.event.TYPE,
                **details,
                "ref": self.ref,
            },
            "ref",
        )

    @classmethod
    def read(cls, f: Fields) -> WorkerFrame:
        event = f.one_of("event", _WORKER_EVENTS)
        details = {
            k: value
            for k, value in f.data.items()
            if k not in ("type", "job", "rank", "event", "ref")
        }
        kind = _WORKER_EVENTS[event]
        if any(member.name == "rank" for member in fields(kind)):
            # The event's rank in the cluster version travels as cluster_rank.
            f.integer("cluster_rank")
            details["rank"] = details.pop("cluster_rank")
        return cls(
            job=f.integer("job"),
            rank=f.integer("rank"),
            event=kind.read(Fields(details, f"{f.what} ({event})")),
            ref=f.text_or_none("ref"),
        )


Report = AppliedFrame | FailedFrame | WorkerFrame
ToAgent = CommandFrame | ClusterFrame | ReceivedFrame | ErrorFrame
FromAgent = AckFrame | AppliedFrame | FailedFrame | WorkerFrame

_TO_AGENT: dict[str, type[ToAgent]] = frame_types(
    CommandFrame, ClusterFrame, ReceivedFrame, ErrorFrame
)
_FROM_AGENT: dict[str, type[FromAgent]] = frame_types(
    AckFrame, AppliedFrame, FailedFrame, WorkerFrame
)


def parse_to_agent(data: object) -> ToAgent:
    """A decoded frame the control plane sent an agent, as its typed frame."""
    return parse_frame(data, _TO_AGENT, "a frame to an agent")


def parse_from_agent(data: object) -> FromAgent:
    """A decoded frame an agent sent the control plane, as its typed frame."""
    return parse_frame(data, _FROM_AGENT, "a frame from an agent")


def with_ref(report: Report, ref: str) -> Report:
    """The report marked ``ref`` (kept by the agent until the control plane confirms it)."""
    return replace(report, ref=ref)
