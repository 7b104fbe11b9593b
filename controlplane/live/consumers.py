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
  ``services.job_worker_report``). An agent frame (``applied``, ``failed``, ``worker``)
  that carries a ``ref`` is confirmed with ``{"type": "received", "ref"}`` once handled
  (or refused with an ``error``): the agent keeps sending it, across reconnections and
  its own restarts, until then.
"""

from __future__ import annotations

import logging
import math
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from controlplane.errors import ApiError
from controlplane.jobs import selectors, services
from controlplane.live import channels

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


def _after_param(scope) -> int | None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    raw = (query.get("after") or [None])[0]
    try:
        value = int(raw) if raw not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


class JobStreamConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        try:
            await database_sync_to_async(selectors.job_get_for_user)(user=user, job_id=self.job_id)
        except ApiError:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        after = _after_param(self.scope)
        # Join first, then replay: a frame published in between arrives both ways and the
        # duplicate is dropped by sequence number below.
        await self.channel_layer.group_add(channels.job_group(self.job_id), self.channel_name)
        self.joined = True
        await self.accept()
        # Frames can reach this consumer out of order (two ingests publish concurrently),
        # so duplicates are dropped by set membership, never by "lower than the last".
        self.after = after or 0
        self.sent: set[int] = set()
        if after is not None:
            frames, complete = await database_sync_to_async(channels.frames_after)(self.job_id, after)
            if not complete:
                await self.send_json({"seq": self.after, "type": "resync", "data": {}})
            for frame in frames:
                await self._send_frame(frame)

    async def disconnect(self, code):
        if getattr(self, "joined", False):  # a refused client never joined the group
            await self.channel_layer.group_discard(channels.job_group(self.job_id), self.channel_name)

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


class AgentCommandConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.node = self.scope.get("node")
        if self.node is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self.channel_layer.group_add(channels.agent_group(self.node.id), self.channel_name)
        await self.accept()
        await database_sync_to_async(services.node_heartbeat)(node=self.node)
        pending = await database_sync_to_async(services.commands_unfinished_for_node)(self.node)
        for command in pending:
            await self._deliver(services.command_frame(command))
        for frame in await database_sync_to_async(services.cluster_frames_for_node)(self.node):
            await self.send_json(frame)

    async def disconnect(self, code):
        if getattr(self, "node", None) is not None:
            await self.channel_layer.group_discard(channels.agent_group(self.node.id), self.channel_name)

    async def _deliver(self, frame: dict) -> None:
        await self.send_json(frame)
        if frame.get("type") == "command":
            await database_sync_to_async(services.command_mark_sent)(command_id=frame["id"])

    async def command_push(self, message):
        await self._deliver(message["command"])

    async def receive_json(self, content, **kwargs):
        await self._receive(content)
        ref = content.get("ref") if isinstance(content, dict) else None
        if isinstance(ref, str) and ref:
            await self.send_json({"type": "received", "ref": ref})

    async def _receive(self, content):
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "worker":
            await self._worker_report(content)
            return
        command_id = content.get("id") if isinstance(content, dict) else None
        if kind not in ("ack", "applied", "failed") or not isinstance(command_id, int):
            await self.send_json({"type": "error", "message":
                                  "Expected {\"type\": \"ack\"|\"applied\"|\"failed\", \"id\": <int>}."})
            return
        try:
            if kind == "ack":
                await database_sync_to_async(services.command_ack)(node=self.node, command_id=command_id)
            else:
                step, lr = content.get("step"), content.get("lr")
                await database_sync_to_async(services.command_finish)(
                    node=self.node, command_id=command_id, ok=kind == "applied",
                    step=step if isinstance(step, int) else None,
                    error=str(content.get("error", ""))[:2000],
                    lr=float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool)
                    and math.isfinite(lr) and lr > 0 else None,
                )
        except ApiError as exc:
            await self.send_json({"type": "error", "id": command_id, "message": exc.message})

    async def _worker_report(self, content: dict) -> None:
        job_id, event = content.get("job"), content.get("event")
        if not isinstance(job_id, int) or not isinstance(event, str):
            await self.send_json({"type": "error", "message":
                                  "Expected {\"type\": \"worker\", \"job\": <int>, \"rank\": <int>, "
                                  "\"event\": <str>, ...}."})
            return
        data = {k: v for k, v in content.items() if k not in ("type", "job", "rank", "event")}
        try:
            await database_sync_to_async(services.job_worker_report)(
                node=self.node, job_id=job_id, rank=content.get("rank"), event=event, data=data)
        except ApiError as exc:
            await self.send_json({"type": "error", "job": job_id, "message": exc.message})
