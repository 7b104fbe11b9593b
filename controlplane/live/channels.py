"""Group names and message types of the channel layer, defined once.

Services call these after their transaction commits; consumers translate the
channel-layer messages into WebSocket frames.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection

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
    """Send one numbered frame to every browser watching the job."""
    seq = next_live_seq(job_id)
    async_to_sync(get_channel_layer().group_send)(
        job_group(job_id), {"type": JOB_MESSAGE, "frame": {"seq": seq, "type": frame_type, "data": data}}
    )


def push_command_to_agent(node_id: int, frame: dict[str, Any]) -> None:
    async_to_sync(get_channel_layer().group_send)(
        agent_group(node_id), {"type": COMMAND_PUSH, "command": frame}
    )
