"""Group names and message types of the channel layer, defined once.

Services call these after their transaction commits; consumers translate the
channel-layer messages into WebSocket frames.

A push is best effort: with Redis down it is logged and dropped, never raised into the
request or task that made it (its rows are committed by then). What is lost is made up
for elsewhere: an agent is sent its unacknowledged commands again (on connect and
periodically, see ``consumers.AgentCommandConsumer``), and a browser that reconnects
past a gap in the frame log is told to ``resync``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

log = logging.getLogger(__name__)

# Recent frames of each job are kept in a Redis list so a browser that reconnects with
# ?after=<seq> receives exactly what it missed (within this window).
FRAME_LOG_LENGTH = 5000
FRAME_LOG_TTL_S = 24 * 3600
_redis_client: redis.Redis | None = None


def frame_log_key(job_id: int) -> str:
    return (
        f"{settings.CHANNEL_LAYERS['default']['CONFIG'].get('prefix', 'adaptrain')}:frames:{job_id}"
    )


def redis_client() -> redis.Redis:
    """The Redis client of the frame log (also for other short-lived keys of a job)."""
    global _redis_client
    if _redis_client is None:
        _redis_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    return _redis_client


# Message types on the channel layer (Channels maps "a.b" to the consumer method a_b).
JOB_MESSAGE = "job.message"
COMMAND_PUSH = "command.push"

# Frame types a browser receives on /ws/jobs/{id}/.
FRAME_METRICS = "metrics"
FRAME_EVENT = "event"
FRAME_JOB = "job"
FRAME_LOG = "log"


def job_group(job_id: int) -> str:
    return f"job.{job_id}"


def agent_group(node_id: int) -> str:
    return f"agent.{node_id}"


def next_live_seq(job_id: int) -> int:
    """Atomically take the job's next live sequence number."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE jobs_job SET live_seq = live_seq + 1 WHERE id = %s RETURNING live_seq", [job_id]
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def publish_to_job(job_id: int, frame_type: str, data: dict[str, Any]) -> None:
    """Send one numbered frame to every browser watching the job, and log it for replay."""
    seq = next_live_seq(job_id)
    frame = {"seq": seq, "type": frame_type, "data": data}
    try:
        key = frame_log_key(job_id)
        pipe = redis_client().pipeline()
        pipe.rpush(key, json.dumps(frame, separators=(",", ":")))
        pipe.ltrim(key, -FRAME_LOG_LENGTH, -1)
        pipe.expire(key, FRAME_LOG_TTL_S)
        pipe.execute()
    except redis.RedisError as exc:  # the live push still goes out; only replay suffers
        log.warning("could not log frame %s of job %s for replay: %s", seq, job_id, exc)
    _group_send(job_group(job_id), {"type": JOB_MESSAGE, "frame": frame})


def _group_send(group: str, message: dict[str, Any]) -> bool:
    """Send to a group; False (logged) when the channel layer cannot be reached."""
    try:
        async_to_sync(get_channel_layer().group_send)(group, message)
    except Exception as exc:  # noqa: BLE001 - redis, socket or channel-layer errors alike
        log.warning(
            "could not push %s to %s (channel layer unavailable: %s)", message["type"], group, exc
        )
        return False
    return True


def frame_log_reset(job_id: int) -> None:
    """Forget logged frames under this job id: a new job starts numbering at 1, and a log
    left by an earlier database (tests, a re-created demo) must not be replayed as its."""
    try:
        redis_client().delete(frame_log_key(job_id))
    except redis.RedisError as exc:
        log.warning("could not reset the frame log of job %s: %s", job_id, exc)


def frames_after(job_id: int, after: int) -> tuple[list[dict[str, Any]], bool]:
    """Logged frames with seq > after, in order, and whether they are all the job's frames
    since ``after`` (False: some were trimmed, or never logged because Redis was down or
    restarted empty; the client should reload history over REST)."""
    # The newest number first: a frame numbered before it is logged by now (or lost).
    with connection.cursor() as cursor:
        cursor.execute("SELECT live_seq FROM jobs_job WHERE id = %s", [job_id])
        row = cursor.fetchone()
    newest = int(row[0]) if row else 0
    raw = redis_client().lrange(frame_log_key(job_id), 0, -1)
    frames = [f for f in (json.loads(item) for item in raw) if f["seq"] > after]
    logged = {f["seq"] for f in frames if f["seq"] <= newest}
    return frames, len(logged) >= newest - after


def push_command_to_agent(node_id: int, frame: dict[str, Any]) -> bool:
    """Push a command (or cluster) frame to the node's agent; False when it could not be
    pushed (it is sent again from its row, see the module docstring)."""
    return _group_send(agent_group(node_id), {"type": COMMAND_PUSH, "command": frame})


AGENT_CLOSE = "agent.close"


def close_agent_channel(node_id: int, code: int) -> bool:
    """Close the node's command channel (``/ws/agent/``) with ``code``: the node was
    revoked or deleted. False (logged) when it could not be pushed; the consumer also
    checks its node every ``CHANNEL_REFRESH_S``."""
    return _group_send(agent_group(node_id), {"type": AGENT_CLOSE, "code": code})
