"""WebSocket consumers: they translate between channel-layer messages and frames.

* :class:`JobStreamConsumer` — ``/ws/jobs/{id}/``: numbered ``metrics``, ``event`` and
  ``job`` frames for one job, to its owner (or staff). With ``?after=<seq>`` the frames
  logged since that number are sent first, then live ones, without gaps or repeats; if
  the log no longer reaches back that far, a ``resync`` frame tells the client to reload
  the stored series over REST.
* :class:`AgentCommandConsumer` — ``/ws/agent/``: commands to an agent; the agent
  answers ``ack`` on receipt and ``applied``/``failed`` once its workers acted.
  Commands not yet acked are sent again whenever the agent (re)connects. Membership
  changes arrive as ``{"type": "cluster", "job", "version", "members", "workers",
  "workers_min"}`` (no ack: the latest version of each job is sent again on connect, and
  agents ignore versions they have). The agent relays what its workers say about
  membership as ``{"type": "worker", "job", "rank", "event", ...}`` with event
  ``standby``, ``rescaled``, ``left``, ``peer_failed`` or ``exited`` (see
  ``jobs.services.reports.job_worker_report``). An agent frame (``applied``, ``failed``, ``worker``)
  that carries a ``ref`` is confirmed with ``{"type": "received", "ref"}`` once handled
  (or refused with an ``error``): the agent keeps sending it, across reconnections and
  its own restarts, until then. Frames are read and built by :mod:`agent.protocol.control`
  (docs/protocols.md has them all).

Redis (the channel layer) may fail or restart under a connected consumer. A failed
channel layer ends the consumer and closes its socket: the client reconnects, and is
refused until Redis answers again. A restarted Redis is empty: group memberships are
gone while sockets stay open, so every ``CHANNEL_REFRESH_S`` each consumer joins its
group again, and an agent's consumer sends again, from the rows, the commands its agent
has not acknowledged that long and cluster versions newer than it sent (a push made
while Redis was down or the group was gone reached nobody). The agent acks a repeat and
applies it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from urllib.parse import parse_qs

import redis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from agent.protocol import ProtocolError
from agent.protocol.control import (
    CLOSE_NODE_REVOKED,
    CLOSE_PROTOCOL_INCOMPATIBLE,
    HEADER_AGENT_VERSION,
    HEADER_PROTOCOL,
    AckFrame,
    AppliedFrame,
    ClusterFrame,
    CommandFrame,
    ErrorFrame,
    FailedFrame,
    FromAgent,
    ReceivedFrame,
    WorkerFrame,
    parse_from_agent,
)
from agent.protocol.rest import ERROR_NODE_REVOKED
from controlplane.errors import ApiError
from controlplane.jobs import outbox, selectors
from controlplane.jobs.models import Node
from controlplane.jobs.services import commands, nodes, reports
from controlplane.live import channels
from controlplane.live.auth import (
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHENTICATED,
    SUBPROTOCOL,
)

log = logging.getLogger(__name__)

CLOSE_CHANNEL_LAYER_FAILED = 1011  # "internal error": the client should reconnect


def _after_param(scope) -> int | None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    raw = (query.get("after") or [None])[0]
    try:
        value = int(raw) if raw not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


class _GroupConsumer(AsyncJsonWebsocketConsumer):
    """A consumer in one channel-layer group that calls :meth:`refresh` every
    ``CHANNEL_REFRESH_S`` while connected (see the module docstring)."""

    group = ""

    async def __call__(self, scope, receive, send):
        self._refresher: asyncio.Task | None = None
        try:
            await super().__call__(scope, receive, send)
        except (redis.RedisError, OSError) as exc:
            # The channel layer failed (Redis is down): end the connection; the client
            # reconnects, and is refused until Redis answers again.
            if getattr(self, "joined", False):  # a refused client was logged already
                log.warning(
                    "closing a WebSocket of %s: the channel layer failed (%s)", self.group, exc
                )
            with contextlib.suppress(Exception):  # it may be closed already
                await self.close(code=CLOSE_CHANNEL_LAYER_FAILED)
        finally:  # also when the channel layer failed, which skips disconnect()
            if self._refresher is not None:
                self._refresher.cancel()

    async def join(self) -> bool:
        """Join :attr:`group` and start refreshing; False (logged) if the channel layer
        cannot be reached: the caller refuses the client, who tries again later."""
        try:
            await self.channel_layer.group_add(self.group, self.channel_name)
        except Exception as exc:  # noqa: BLE001 - redis, socket or channel-layer errors alike
            log.warning(
                "refusing a client of %s: the channel layer is unavailable (%s)", self.group, exc
            )
            return False
        self.joined = True
        self._refresher = asyncio.create_task(self._refresh_loop())
        return True

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(settings.CHANNEL_REFRESH_S)
            try:
                await self.refresh()
                await self.channel_layer.group_add(self.group, self.channel_name)
            except Exception as exc:  # noqa: BLE001 - tried again next time
                log.warning("refreshing %s failed: %s", self.group, exc)

    async def refresh(self) -> None:
        """Make up for pushes that may have been lost (before the group is joined again)."""

    async def disconnect(self, code):
        if getattr(self, "joined", False):  # a refused client never joined the group
            await self.channel_layer.group_discard(self.group, self.channel_name)


class JobStreamConsumer(_GroupConsumer):
    async def _refuse(self, code: int, reason: str) -> None:
        """Accept, then close with ``code`` and ``reason``: closing before the handshake
        completes reaches a client as a bare HTTP 403 that says nothing."""
        await self.accept(self._subprotocol())
        await self.close(code=code, reason=reason[:120])

    def _subprotocol(self) -> str | None:
        return SUBPROTOCOL if SUBPROTOCOL in (self.scope.get("subprotocols") or []) else None

    async def connect(self):
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        refusal = self.scope.get("ws_refusal")
        if refusal is not None:
            await self._refuse(*refusal)
            return
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self._refuse(
                CLOSE_UNAUTHENTICATED,
                "Log in, or offer an API token as the subprotocol bearer.<token>.",
            )
            return
        try:
            await database_sync_to_async(selectors.job_get_for_user)(user=user, job_id=self.job_id)
        except ApiError:
            await self._refuse(CLOSE_NOT_FOUND, f"No job {self.job_id}, or not yours.")
            return
        after = _after_param(self.scope)
        # Join first, then replay: a frame published in between arrives both ways and the
        # duplicate is dropped by sequence number below.
        self.group = channels.job_group(self.job_id)
        if not await self.join():
            await self.close()
            return
        await self.accept(self._subprotocol())
        # Frames can reach this consumer out of order (two ingests publish concurrently),
        # so duplicates are dropped by set membership, never by "lower than the last".
        self.after = after or 0
        self.sent: set[int] = set()
        if after is not None:
            frames, complete = await database_sync_to_async(channels.frames_after)(
                self.job_id, after
            )
            if not complete:
                await self.send_json({"seq": self.after, "type": "resync", "data": {}})
            for frame in frames:
                await self._send_frame(frame)

    async def _send_frame(self, frame: dict) -> None:
        seq = frame["seq"]
        if seq <= self.after or seq in self.sent:
            return
        self.sent.add(seq)
        if len(self.sent) > 20_000:  # forget the oldest half; they will not come again
            self.sent = set(sorted(self.sent)[10_000:])
        await self.send_json(frame)

    async def job_message(self, message):
        await self._send_frame(message["frame"])


def _header(scope, name: str) -> str:
    wanted = name.lower().encode("latin-1")
    for key, value in scope.get("headers") or []:
        if key.lower() == wanted:
            return value.decode("latin-1").strip()
    return ""


class AgentCommandConsumer(_GroupConsumer):
    async def connect(self):
        self.node = self.scope.get("node")
        if self.node is None:
            refusal = self.scope.get("node_refusal")
            if refusal is not None and refusal.code == ERROR_NODE_REVOKED:
                # Accepted only to be closed with the code that tells the agent to stop.
                await self.accept()
                await self.send_json(ErrorFrame(message=refusal.message).to_dict())
                await self.close(code=CLOSE_NODE_REVOKED)
                return
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.group = channels.agent_group(self.node.id)
        self.cluster_sent: dict[int, int] = {}  # the newest cluster version sent, by job
        if not await self.join():
            await self.close()
            return
        await self.accept()
        # The agent names its protocol and version in headers (none: protocol 1).
        raw_protocol = _header(self.scope, HEADER_PROTOCOL)
        try:
            protocol = int(raw_protocol) if raw_protocol else None
            await database_sync_to_async(nodes.node_heartbeat)(
                node=self.node,
                agent_version=_header(self.scope, HEADER_AGENT_VERSION)[:50],
                protocol=protocol,
            )
        except (ValueError, ApiError) as exc:
            message = (
                exc.message
                if isinstance(exc, ApiError)
                else f"{HEADER_PROTOCOL} must be an integer, got {raw_protocol!r}"
            )
            await self.send_json(ErrorFrame(message=message).to_dict())
            await self.close(code=CLOSE_PROTOCOL_INCOMPATIBLE)
            return
        if await self._close_if_refused():  # revoked or deleted while it connected
            return
        pending = await database_sync_to_async(selectors.commands_unfinished_for_node)(self.node)
        for command in pending:
            await self._deliver(outbox.command_frame(command))
        for frame in await database_sync_to_async(outbox.cluster_frames_for_node)(self.node):
            await self._deliver(frame)

    async def _close_if_refused(self) -> bool:
        """Close the socket of a node revoked or deleted since it was authenticated."""
        standing = await database_sync_to_async(selectors.node_standing)(self.node.id)
        if standing is None or standing == Node.Status.REVOKED:
            await self.close(code=CLOSE_UNAUTHENTICATED if standing is None else CLOSE_NODE_REVOKED)
            return True
        return False

    async def refresh(self) -> None:
        # The push that closes a revoked or deleted node's socket may have been lost.
        if await self._close_if_refused():
            return
        unacked = await database_sync_to_async(selectors.commands_unfinished_for_node)(
            self.node, unacked_for_s=settings.CHANNEL_REFRESH_S
        )
        for command in unacked:
            log.info(
                "sending command %s to node %s again: not acknowledged within %.0f s",
                command.id,
                self.node.name,
                settings.CHANNEL_REFRESH_S,
            )
            await self._deliver(outbox.command_frame(command))
        for frame in await database_sync_to_async(outbox.cluster_frames_for_node)(self.node):
            if frame["version"] > self.cluster_sent.get(frame["job"], 0):
                await self._deliver(frame)

    async def _deliver(self, frame: dict) -> None:
        """Send a ``command`` or ``cluster`` frame (built by ``jobs.outbox``) and note it."""
        await self.send_json(frame)
        if frame["type"] == CommandFrame.TYPE:
            await database_sync_to_async(commands.command_mark_sent)(command_id=frame["id"])
        elif frame["type"] == ClusterFrame.TYPE:
            self.cluster_sent[frame["job"]] = max(
                self.cluster_sent.get(frame["job"], 0), frame["version"]
            )

    async def command_push(self, message):
        await self._deliver(message["command"])

    async def agent_close(self, message):
        """The node was revoked or deleted (``channels.close_agent_channel``)."""
        await self.close(code=message["code"])

    async def receive_json(self, content, **kwargs):
        try:
            frame = parse_from_agent(content)
        except ProtocolError as exc:
            await self.send_json(ErrorFrame(message=f"{exc} (see docs/protocols.md)").to_dict())
        else:
            await self._receive(frame)
        # A report with a ref is confirmed once handled, or refused: either way the agent
        # stops sending it.
        ref = content.get("ref") if isinstance(content, dict) else None
        if isinstance(ref, str) and ref:
            await self.send_json(ReceivedFrame(ref=ref).to_dict())

    async def _receive(self, frame: FromAgent) -> None:
        try:
            match frame:
                case AckFrame(id=command_id):
                    await database_sync_to_async(commands.command_ack)(
                        node=self.node, command_id=command_id
                    )
                case AppliedFrame(id=command_id, step=step, lr=lr):
                    await database_sync_to_async(commands.command_finish)(
                        node=self.node,
                        command_id=command_id,
                        ok=True,
                        step=step,
                        lr=lr if lr is not None and math.isfinite(lr) and lr > 0 else None,
                    )
                case FailedFrame(id=command_id, error=error):
                    await database_sync_to_async(commands.command_finish)(
                        node=self.node, command_id=command_id, ok=False, error=error[:2000]
                    )
                case WorkerFrame(job=job_id, rank=rank, event=event):
                    await database_sync_to_async(reports.job_worker_report)(
                        node=self.node, job_id=job_id, rank=rank, event=event
                    )
        except ApiError as exc:
            job = frame.job if isinstance(frame, WorkerFrame) else None
            command_id = None if isinstance(frame, WorkerFrame) else frame.id
            await self.send_json(ErrorFrame(message=exc.message, id=command_id, job=job).to_dict())
