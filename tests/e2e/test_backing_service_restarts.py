"""Redis and Celery go away under a training job and come back, with real processes: web,
Celery worker and beat, one agent and two TensorFlow workers, on a redis-server of the
test's own (no persistence: a restarted one is empty, as after a crash).

* Redis is stopped while a job trains: a command issued meanwhile is accepted (201: it
  is a PostgreSQL row), and once Redis is back it reaches the agent — whose channel-layer
  group membership went with the old Redis — and is applied once, at the same step on
  both workers; metrics keep arriving. A job created meanwhile (201, its placement task
  could not be queued) is placed by the beat's sweep and succeeds.
* The Celery worker and beat are killed while a job trains: a command issued meanwhile
  is applied (pushes do not go through Celery), and a job created meanwhile is placed once
  they are back and succeeds.

The long jobs train until the test cancels them: however fast the machine trains, they
are still running when the commands arrive.
"""

from __future__ import annotations

import time

import pytest

from agent.local import free_port
from devtools.devstack import RedisServer
from tests.e2e.conftest import _stack, wait_for, wait_for_job
from tests.e2e.test_agent_restart import (
    LOG_EVERY,
    _assert_applied_once_at_the_same_step,
    _command,
    _command_detail,
    _last_step,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if not RedisServer.available():
        pytest.skip(
            "redis-server is not installed: these tests stop and start a Redis of their own"
        )
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def services_stack(tmp_path_factory, redis_server):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGENT_HEARTBEAT_S", "1")
        for stack in _stack(
            tmp_path_factory, suffix="services", agents=1, slots=3, redis_url=redis_server.url
        ):
            stack.redis = redis_server
            yield stack


def _timed_command(api, job_id: int, action: str, value) -> tuple[int, float]:
    started = time.monotonic()
    command_id = _command(api, job_id, action, value)  # asserts 201
    return command_id, time.monotonic() - started


def _create_job(api, name: str, *, steps: int = 10_000_000, workers: int = 2) -> int:
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": name,
            "entrypoint": "examples.digits",
            "hyperparameters": {
                "batch_size": 32,
                "lr": 0.05,
                "steps": steps,
                "log_every": LOG_EVERY,
            },
            "workers": {"initial": workers},
        },
    )
    assert status == 201, job
    return job["id"]


def _create_small_job(api, name: str) -> int:
    return _create_job(api, name, steps=300, workers=1)


def _cancel(stack, job_id: int) -> None:
    """Cancel a job that trains on (as long as a test needs it) and wait for its stop."""
    status, body = stack.api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
    assert status == 200, body
    wait_for(
        lambda: all(
            c["state"] == "applied"
            for c in stack.api.get(f"/api/v1/jobs/{job_id}/commands/")[1]
            if c["action"] == "stop"
        ),
        timeout_s=60,
        what="the workers to stop",
        stack=stack,
    )


def _training(stack, name: str) -> int:
    job_id = _create_job(stack.api, name)
    wait_for_job(
        stack.api,
        job_id,
        lambda j: j["status"] == "running",
        timeout_s=120,
        what="the job to run",
        stack=stack,
    )
    wait_for(
        lambda: _last_step(stack.api, job_id) >= 200,
        timeout_s=120,
        what="training to get going",
        stack=stack,
    )
    return job_id


def test_a_command_issued_while_redis_is_down_is_applied_once_redis_is_back(services_stack):
    stack, api = services_stack, services_stack.api
    job_id = _training(stack, "survives a Redis restart")

    stack.redis.stop()
    time.sleep(2)  # long enough for the web process's channel-layer reads to fail
    command_id, took_s = _timed_command(api, job_id, "set_batch_size", 64)
    assert took_s < 10, f"issuing a command with Redis down took {took_s:.1f} s"
    status, job = api.get(f"/api/v1/jobs/{job_id}/")
    assert status == 200 and job["status"] == "running", job
    queued = _create_small_job(
        api, "created while Redis is down"
    )  # its placement task is not queued
    time.sleep(2)
    stack.redis.start()  # an empty Redis: channel-layer groups and queued tasks are gone

    wait_for(
        lambda: _command_detail(api, job_id, command_id)["state"] == "applied",
        timeout_s=60,
        what="the command issued while Redis was down to be applied",
        stack=stack,
    )
    _assert_applied_once_at_the_same_step(api, job_id, command_id, 64)
    now = _last_step(api, job_id)
    wait_for(
        lambda: _last_step(api, job_id) > now,
        timeout_s=60,
        what="new metrics after Redis is back",
        stack=stack,
    )
    # Pushes reach the agent again through the new Redis, not only redelivery: a second
    # command is applied promptly.
    second = _command(api, job_id, "set_batch_size", 96)
    wait_for(
        lambda: _command_detail(api, job_id, second)["state"] == "applied",
        timeout_s=30,
        what="a command issued after Redis is back to be applied",
        stack=stack,
    )
    _assert_applied_once_at_the_same_step(api, job_id, second, 96)

    # The beat's placement sweep placed the one created meanwhile.
    job = wait_for_job(
        api,
        queued,
        lambda j: j["status"] in ("succeeded", "failed") and j,
        timeout_s=300,
        what="the job created while Redis was down to finish",
        stack=stack,
    )
    assert job["status"] == "succeeded", job["status_reason"]
    _cancel(stack, job_id)


def test_a_command_and_a_new_job_survive_a_killed_celery(services_stack):
    stack, api = services_stack, services_stack.api
    job_id = _training(stack, "survives a Celery crash")

    stack.stop_celery(kill=True)
    command_id, _ = _timed_command(api, job_id, "set_batch_size", 64)
    queued = _create_small_job(api, "created while Celery is down")
    # The command needs no Celery: the web process pushes it to the agent.
    wait_for(
        lambda: _command_detail(api, job_id, command_id)["state"] == "applied",
        timeout_s=60,
        what="the command issued while Celery was down to be applied",
        stack=stack,
    )
    _assert_applied_once_at_the_same_step(api, job_id, command_id, 64)
    assert api.get(f"/api/v1/jobs/{queued}/")[1]["status"] == "pending"  # nobody placed it

    stack.start_celery()
    wait_for_job(
        api,
        queued,
        lambda j: j["status"] in ("running", "succeeded"),
        timeout_s=60,
        what="the job created while Celery was down to be placed",
        stack=stack,
    )
    job = wait_for_job(
        api,
        queued,
        lambda j: j["status"] in ("succeeded", "failed") and j,
        timeout_s=300,
        what="the job created while Celery was down to finish",
        stack=stack,
    )
    assert job["status"] == "succeeded", job["status_reason"]
    _cancel(stack, job_id)
