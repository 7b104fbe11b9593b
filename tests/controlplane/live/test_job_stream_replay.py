"""/ws/jobs/{id}/: live frames are numbered, and a client that reconnects with ?after=
receives exactly the frames it missed, then live ones."""

import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator

from controlplane.jobs.services.jobs import job_create
from controlplane.live import channels
from controlplane.live.consumers import JobStreamConsumer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def job(user):
    return job_create(
        owner=user,
        name="j",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 8, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
    )


def communicator(user, job_id, query=""):
    c = WebsocketCommunicator(JobStreamConsumer.as_asgi(), f"/ws/jobs/{job_id}/{query}")
    c.scope["user"] = user
    c.scope["url_route"] = {"kwargs": {"job_id": job_id}}
    c.scope["query_string"] = query.lstrip("?").encode()
    return c


def publish(job_id, n):
    for i in range(n):
        channels.publish_to_job(
            job_id,
            channels.FRAME_METRICS,
            {"series": [{"name": "loss", "rank": None, "step": [i], "value": [1.0 / (i + 1)]}]},
        )


def test_reconnecting_client_gets_exactly_what_it_missed_then_live_frames(user, job):
    async def scenario():
        first = communicator(user, job.id)
        connected, _ = await first.connect()
        assert connected
        await sync_to_async(publish)(job.id, 3)
        seen = [(await first.receive_json_from(timeout=5))["seq"] for _ in range(3)]
        await first.disconnect()
        await sync_to_async(publish)(job.id, 4)  # missed while away
        second = communicator(user, job.id, f"?after={seen[-1]}")
        assert (await second.connect())[0]
        replayed = [(await second.receive_json_from(timeout=5))["seq"] for _ in range(4)]
        await sync_to_async(publish)(job.id, 1)
        live = await second.receive_json_from(timeout=5)
        assert await second.receive_nothing(timeout=0.3)
        await second.disconnect()
        return seen, replayed, live["seq"]

    seen, replayed, live = async_to_sync(scenario)()
    assert replayed == list(range(seen[-1] + 1, seen[-1] + 5))
    assert live == replayed[-1] + 1


def test_a_client_too_far_behind_is_told_to_resync(user, job, monkeypatch):
    monkeypatch.setattr(channels, "FRAME_LOG_LENGTH", 3)
    publish(job.id, 6)

    async def scenario():
        c = communicator(user, job.id, "?after=1")
        assert (await c.connect())[0]
        frames = [await c.receive_json_from(timeout=5) for _ in range(4)]
        await c.disconnect()
        return frames

    frames = async_to_sync(scenario)()
    job.refresh_from_db()
    assert frames[0]["type"] == "resync"
    assert [f["seq"] for f in frames[1:]] == [job.live_seq - 2, job.live_seq - 1, job.live_seq]


def test_other_users_are_refused(other_user, job):
    async def scenario():
        c = communicator(other_user, job.id)
        connected, _ = await c.connect(timeout=5)
        code = (await c.receive_output(timeout=5)).get("code")
        # Let the refused consumer finish (it is waiting for the disconnect) rather than leave
        # it to be cancelled, with its channel-layer receive, when the event loop closes.
        await c.disconnect()
        await c.wait(timeout=5)
        return connected, code

    connected, code = async_to_sync(scenario)()
    # Accepted, then closed with the code (a close before the handshake reaches a real
    # client as a bare HTTP 403): 4404, as REST answers 404 for someone else's job.
    assert connected and code == 4404


def test_frames_arriving_out_of_order_are_all_delivered_once(user, job):
    async def scenario():
        c = communicator(user, job.id, "?after=0")
        assert (await c.connect())[0]
        created = await c.receive_json_from(timeout=5)  # the job's "created" event
        consumer_input = [
            {"seq": 9, "type": "metrics", "data": {}},
            {"seq": 8, "type": "metrics", "data": {}},
            {"seq": 9, "type": "metrics", "data": {}},
        ]
        for frame in consumer_input:
            await c.send_input({"type": "job.message", "frame": frame})
        got = [(await c.receive_json_from(timeout=5))["seq"] for _ in range(2)]
        assert await c.receive_nothing(timeout=0.3)
        await c.disconnect()
        return created, got

    created, got = async_to_sync(scenario)()
    assert created["type"] == "event"
    assert got == [9, 8]


def test_a_new_job_does_not_inherit_frames_logged_under_its_id(user, job):
    # Frames left in Redis under the next id (as by an earlier, since re-created database).
    stale_id = job.id + 1
    key = channels.frame_log_key(stale_id)
    channels.redis_client().delete(key)
    for seq in (1, 2, 3):
        channels.redis_client().rpush(
            key, json.dumps({"seq": seq, "type": "metrics", "data": {"series": []}})
        )
    assert len(channels.frames_after(stale_id, 0)[0]) == 3
    again = job_create(
        owner=user,
        name="again",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 8, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
    )
    assert again.id == stale_id
    frames, _ = channels.frames_after(again.id, 0)
    assert [(f["seq"], f["type"]) for f in frames] == [(1, "event")]  # only its own "created"


def test_a_client_is_told_to_resync_when_frames_were_lost_with_redis(user, job):
    publish(job.id, 3)  # logged: 1 (the "created" event) to 4
    for _ in range(2):  # numbered, but neither logged nor pushed: Redis was down
        channels.next_live_seq(job.id)
    assert channels.frames_after(job.id, 1)[1] is False
    publish(job.id, 2)
    job.refresh_from_db()
    frames, complete = channels.frames_after(job.id, job.live_seq - 2)
    assert complete and [f["seq"] for f in frames] == [job.live_seq - 1, job.live_seq]
    channels.redis_client().delete(channels.frame_log_key(job.id))  # a restarted Redis is empty
    assert channels.frames_after(job.id, job.live_seq - 1) == ([], False)
    assert channels.frames_after(job.id, job.live_seq) == ([], True)
    publish(job.id, 1)

    async def scenario():
        c = communicator(user, job.id, "?after=4")
        assert (await c.connect())[0]
        got = [await c.receive_json_from(timeout=5) for _ in range(2)]
        await c.disconnect()
        return got

    got = async_to_sync(scenario)()
    job.refresh_from_db()
    assert got[0]["type"] == "resync"
    assert got[1]["seq"] == job.live_seq
