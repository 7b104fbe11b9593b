"""Group names and message types of the channel layer, defined once.

Services call these after their transaction commits; consumers translate the
channel-layer messages into WebSocket frames.
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
    return f"{settings.CHANNEL_LAYERS['default']['CONFIG'].get('prefix', 'adaptrain')}:frames:{job_id}"


def _redis() -> redis.Redis:
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
        pipe = _redis().pipeline()
        pipe.rpush(key, json.dumps(frame, separators=(",", ":")))
        pipe.ltrim(key, -FRAME_LOG_LENGTH, -1)
        pipe.expire(key, FRAME_LOG_TTL_S)
        pipe.execute()
    except redis.RedisError as exc:  # the live push still goes out; only replay suffers
        log.warning("could not log frame %s of job %s for replay: %s", seq, job_id, exc)
    async_to_sync(get_channel_layer().group_send)(job_group(job_id), {"type": JOB_MESSAGE, "frame": frame})


def frame_log_reset(job_id: int) -> None:
    """Forget logged frames under this job id: a new job starts numbering at 1, and a log
    left by an earlier database (tests, a re-created demo) must not be replayed as its."""
    try:
        _redis().delete(frame_log_key(job_id))
    except redis.RedisError as exc:
        log.warning("could not reset the frame log of job %s: %s", job_id, exc)


def frames_after(job_id: int, after: int) -> tuple[list[dict[str, Any]], bool]:
    """Logged frames with seq > after, in order, and whether the log still reaches back that
    far (False: some were trimmed; the client should reload history over REST)."""
    raw = _redis().lrange(frame_log_key(job_id), 0, -1)
    frames = [json.loads(item) for item in raw]
    complete = not frames or frames[0]["seq"] <= after + 1
    return [f for f in frames if f["seq"] > after], complete


def push_command_to_agent(node_id: int, frame: dict[str, Any]) -> None:
    async_to_sync(get_channel_layer().group_send)(
        agent_group(node_id), {"type": COMMAND_PUSH, "command": frame}
    )
