"""Stored log lines reach the job's browsers as numbered ``log`` frames on
/ws/jobs/{id}/ — ``{"run", "lines": [{"seq", "rank", "stream", "time", "text"}],
"skipped"}`` — replayed to a client that reconnects with ?after=; a flood's frame carries
its newest lines and says how many older ones it skipped."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator

from controlplane.live.consumers import JobStreamConsumer
from controlplane.logs import services

pytestmark = pytest.mark.django_db(transaction=True)


def communicator(user, job_id, query=""):
    c = WebsocketCommunicator(JobStreamConsumer.as_asgi(), f"/ws/jobs/{job_id}/{query}")
    c.scope["user"] = user
    c.scope["url_route"] = {"kwargs": {"job_id": job_id}}
    c.scope["query_string"] = query.lstrip("?").encode()
    return c


def ingest(node, job, batch_id, texts, stream="stdout"):
    lines = [
        {"rank": 0, "stream": stream, "time": 1_750_000_000.0 + i, "text": t}
        for i, t in enumerate(texts)
    ]
    return services.logs_ingest(
        node=node, data={"batch_id": batch_id, "job": job.id, "lines": lines}
    )


def test_stored_lines_are_pushed_as_numbered_log_frames_and_replayed(user, node, placed_job):
    async def scenario():
        c = communicator(user, placed_job.id)
        assert (await c.connect())[0]
        await sync_to_async(ingest)(node, placed_job, "b-1", ["hello", "world"])
        frame = await c.receive_json_from(timeout=5)
        await c.disconnect()
        await sync_to_async(ingest)(node, placed_job, "b-2", ["Traceback"], stream="stderr")
        again = communicator(user, placed_job.id, f"?after={frame['seq']}")
        assert (await again.connect())[0]
        missed = await again.receive_json_from(timeout=5)
        assert await again.receive_nothing(timeout=0.3)
        await again.disconnect()
        return frame, missed

    frame, missed = async_to_sync(scenario)()
    assert frame["type"] == "log"
    assert frame["data"] == {
        "run": 1,
        "lines": [
            {"seq": 1, "rank": 0, "stream": "stdout", "time": 1_750_000_000.0, "text": "hello"},
            {"seq": 2, "rank": 0, "stream": "stdout", "time": 1_750_000_001.0, "text": "world"},
        ],
        "skipped": 0,
    }
    assert missed["type"] == "log" and missed["seq"] == frame["seq"] + 1
    assert [(x["seq"], x["stream"], x["text"]) for x in missed["data"]["lines"]] == [
        (3, "stderr", "Traceback")
    ]


def test_a_floods_frame_carries_its_newest_lines(user, node, placed_job):
    texts = [f"{i:05d} " + "y" * 994 for i in range(100)]  # 100 kB, over a frame's 32 kB

    async def scenario():
        c = communicator(user, placed_job.id)
        assert (await c.connect())[0]
        await sync_to_async(ingest)(node, placed_job, "b-big", texts)
        frame = await c.receive_json_from(timeout=5)
        await c.disconnect()
        return frame

    data = async_to_sync(scenario)()["data"]
    kept = [x["seq"] for x in data["lines"]]
    assert kept[-1] == 100 and kept == list(range(kept[0], 101))
    assert data["skipped"] == kept[0] - 1 > 0
    assert sum(len(x["text"]) for x in data["lines"]) <= services.FRAME_MAX_BYTES
