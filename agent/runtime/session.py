"""A worker's session: who it is in the job, and its link to the agent that started it.

:func:`init` reads the agent's environment (``ADAPTRAIN_*``, see :mod:`agent.protocol`)
into a :class:`Session`, opens the channel to the agent and forms the first
communicator. Without that environment a script runs as a single worker.

The link has two forms: the agent's Unix socket (:mod:`agent.runtime.channel`, which
buffers while the agent is away and survives agent restarts) or, without one, stdin and
stdout (lines prefixed with ``protocol.PREFIX``; what :mod:`agent.local` and tests use).
A reader thread hands what the agent sends to the command inbox
(:mod:`agent.runtime.commands`) and to the cluster versions
(:mod:`agent.runtime.membership`). Every message a worker sends to its agent is built
here, in the ``send_*`` methods, :meth:`Session.report` and :func:`exit_message`; the
frames themselves are described in ``docs/protocols.md``. A worker whose agent is gone
for good (stdin closed, or no agent on the socket for the grace period) is an orphan
and stops. Framework-neutral: no TensorFlow here.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agent import protocol
from agent.protocol import ProtocolError
from agent.protocol.worker import (
    AppliedLine,
    ClusterLine,
    CommandLine,
    ExitLine,
    FailedLine,
    FromWorker,
    LeftLine,
    MetricPoint,
    MetricsLine,
    PeerFailedLine,
    RescaledLine,
    StandbyLine,
    parse_to_worker,
    stdio_line,
)
from agent.runtime.channel import AgentChannel
from agent.runtime.commands import CommandInbox
from agent.runtime.membership import Membership


@dataclass
class Session:
    """One worker's view of the job: who it is, its peers, its parameters, its inbox."""

    job: int
    rank: int
    size: int
    peers: list[str]
    params: dict[str, Any]
    first_seq: int
    communicator: Any = None
    address: str = ""  # host:port this worker listens on: its identity across cluster versions
    cluster_version: int = 0
    joining: bool = False  # started as a warm standby, not yet a member
    left: bool = False  # removed from the job by a newer cluster version
    # Commands from the agent, by seq (every seq up to first_seq came before this worker).
    commands: CommandInbox = field(init=False, repr=False)
    # The cluster versions announced, and the communicator of this worker's.
    membership: Membership = field(init=False, repr=False)
    _channel: AgentChannel | None = field(default=None, init=False, repr=False)
    _out_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.commands = CommandInbox(self.first_seq)
        self.membership = Membership(self)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return self.params.get("hyperparameters", {})

    @property
    def rejoin_timeout_s(self) -> float:
        """How long to wait for the next cluster version after a peer died."""
        return float(self.hyperparameters.get("rejoin_timeout_s", 120))

    @property
    def batch_size(self) -> int:
        return int(self.params.get("batch_size") or self.hyperparameters.get("batch_size", 32))

    @property
    def lr(self) -> float:
        return float(self.params.get("lr") or self.hyperparameters.get("lr", 0.01))

    # -- messages to the agent --------------------------------------------------------
    def send(self, line: FromWorker) -> None:
        """Send one line to the agent (the typed lines of :mod:`agent.protocol.worker`)."""
        if isinstance(line, (AppliedLine, FailedLine)):
            self.commands.keep_reply(line)
        if self._channel is not None:
            self._channel.send(line.to_dict())
            return
        text = stdio_line(line)
        with self._out_lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def report(self, metrics: dict[str, float], *, step: int, per_rank: bool = False) -> None:
        """Report metric values at ``step``: whole-job series, or this worker's when per_rank."""
        now, rank = time.time(), self.rank if per_rank else None
        self.send(
            MetricsLine(
                points=tuple(
                    MetricPoint(name=name, step=int(step), value=float(value), time=now, rank=rank)
                    for name, value in metrics.items()
                )
            )
        )

    def send_applied(self, command: CommandLine, *, step: int, lr: float) -> None:
        self.send(AppliedLine(id=command.id, seq=command.seq, step=step, lr=lr))

    def send_failed(self, command: CommandLine, error: str) -> None:
        self.send(FailedLine(id=command.id, seq=command.seq, error=error))

    def send_rescaled(self, version: int, *, step: int, paused_s: float) -> None:
        """This worker trains in cluster ``version`` now (at its rank and size), from
        ``step``; training stood still for ``paused_s`` seconds for the change."""
        self.send(
            RescaledLine(
                version=version, rank=self.rank, size=self.size, step=step, paused_s=paused_s
            )
        )

    def send_left(self, version: int, *, step: int) -> None:
        self.send(LeftLine(version=version, step=step))

    def send_peer_failed(self, version: int, error: Exception) -> None:
        self.send(PeerFailedLine(version=version, error=str(error)[:1000]))

    def send_standby(self) -> None:
        self.send(StandbyLine(address=self.address))

    # -- messages from the agent (a reader thread) ------------------------------------
    def _on_agent_message(self, message: dict[str, Any]) -> None:
        try:
            line = parse_to_worker(message)
        except ProtocolError as exc:
            print(f"adaptrain: ignoring a line from the agent: {exc}", file=sys.stderr)
            return
        match line:
            case CommandLine():
                reply = self.commands.receive(line)
                if reply is not None:
                    self.send(reply)
            case ClusterLine():
                self.membership.receive_cluster(line)
            case _:  # acks and detach are the channel's business (agent.runtime.channel)
                pass

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                print(f"ignoring malformed command line: {line[:200]!r}", file=sys.stderr)
                continue
            self._on_agent_message(message)
        self.membership.agent_gone()

    def _orphaned(self) -> None:
        """No agent connected for the grace period: stop this worker (the main thread gets
        KeyboardInterrupt at its next Python instruction; a worker stuck in native code for
        another minute is ended outright)."""
        grace = self._channel.grace_s if self._channel is not None else 0
        print(
            f"adaptrain: no agent connected for {grace:.0f} s ({protocol.ENV_AGENT_GRACE_S}); "
            f"this worker stops",
            file=sys.stderr,
            flush=True,
        )
        self.membership.agent_gone()
        import _thread

        _thread.interrupt_main()

        def hard_stop() -> None:
            time.sleep(60)
            print(
                "adaptrain: the worker did not stop within 60 s of being orphaned; exiting",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)

        threading.Thread(target=hard_stop, name="adaptrain-orphan-exit", daemon=True).start()


def exit_message(code: int) -> dict[str, Any]:
    """The last message of a worker started by :mod:`agent.runtime.launcher`: how it ended."""
    return ExitLine(code=code).to_dict()


def init() -> Session:
    """Join the job described by the agent's environment (or run alone without it).

    A worker started as a warm standby (``ADAPTRAIN_JOINING=1``) is not a member yet:
    the trainer builds the model, reports ``standby`` and waits to be let in."""
    env = os.environ
    if protocol.ENV_RANK not in env and env.get(protocol.ENV_JOINING) != "1":
        return Session(
            job=0,
            rank=0,
            size=1,
            peers=[],
            params=json.loads(env.get(protocol.ENV_PARAMS, "{}")),
            first_seq=0,
        )
    peers = [p for p in env.get(protocol.ENV_PEERS, "").split(",") if p]
    joining = env.get(protocol.ENV_JOINING) == "1"
    rank = -1 if joining else int(env[protocol.ENV_RANK])
    address = env.get(protocol.ENV_ADDRESS) or (peers[rank] if 0 <= rank < len(peers) else "")
    if not address:
        raise ValueError(f"{protocol.ENV_ADDRESS} must name this worker's host:port")
    session = Session(
        job=int(env.get(protocol.ENV_JOB, "0")),
        rank=rank,
        size=0 if joining else len(peers),
        peers=peers,
        params=json.loads(env.get(protocol.ENV_PARAMS, "{}")),
        first_seq=int(env.get(protocol.ENV_FIRST_SEQ, "0")),
        address=address,
        cluster_version=int(env.get(protocol.ENV_CLUSTER_VERSION, "0")),
        joining=joining,
    )
    socket_path = env.get(protocol.ENV_AGENT_SOCKET)
    if socket_path:
        session._channel = AgentChannel(
            socket_path,
            on_message=session._on_agent_message,
            on_orphaned=session._orphaned,
            grace_s=float(env.get(protocol.ENV_AGENT_GRACE_S) or 600),
        )
        session._channel.start()
    else:
        threading.Thread(target=session._read_stdin, name="adaptrain-commands", daemon=True).start()
    if not joining and session.size > 1:
        session.membership.form_first_communicator(session.params.get("topology") or "auto")
    return session
