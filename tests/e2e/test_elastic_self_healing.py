"""An elastic job heals itself through the real agents and control plane: a worker
crashes, the job shrinks and trains on, and once its membership has been still for
AUTO_GROW_DELAY_S the scheduler grows it back to the size it should have with a warm
standby; a user's shrink then sets a smaller size, which is kept. Workers are the
protocol-speaking stand-in of test_elastic_agents (no TensorFlow)."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import wait_for_job
from tests.e2e.test_elastic_agents import (
    _address,
    _job,
    _members,
    _scale,
    _start_elastic,
    fake_worker_stack,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def healing_stack(tmp_path_factory):
    yield from fake_worker_stack(tmp_path_factory, suffix="healing", env={"AUTO_GROW_DELAY_S": "3"})


def test_a_crashed_worker_is_replaced_and_a_users_shrink_is_kept(healing_stack):
    stack, api = healing_stack, healing_stack.api
    job = _start_elastic(stack, "self-healing", initial=3)
    job_id = job["id"]
    assert len(_members(job)) == 3 and job["parameters"]["workers_wanted"] == 3

    (stack.fake_dir / f"crash-{_address(job, 1)}").touch()
    job = wait_for_job(
        api,
        job_id,
        lambda j: j["cluster_version"] == 2 and j["status"] == "running" and j,
        timeout_s=60,
        what="the job to shrink without the crashed worker",
        stack=stack,
    )
    assert [rank for _, rank in _members(job)] == [0, 2]

    # Grown back by the scheduler: a new worker number, let in from a warm standby.
    job = wait_for_job(
        api,
        job_id,
        lambda j: j["cluster_version"] == 3 and j["status"] == "running" and j,
        timeout_s=60,
        what="the scheduler to grow the job back to 3 workers",
        stack=stack,
    )
    assert [rank for _, rank in _members(job)] == [0, 2, 3] and job["parameters"]["workers"] == 3
    scale = [
        c for c in api.get(f"/api/v1/jobs/{job_id}/commands/")[1] if c["action"] == "scale_workers"
    ]
    assert scale and all(
        c["issued_by"] == "scheduler" and c["state"] == "applied" for c in scale
    ), scale
    events = api.get(f"/api/v1/jobs/{job_id}/events/")[1]
    assert any(e["data"].get("event") == "grow_to_wanted" for e in events)

    # A user's shrink is the size the job should have from then on.
    job = _scale(stack, job_id, 2)
    assert job["parameters"]["workers_wanted"] == 2
    time.sleep(8)  # more than twice AUTO_GROW_DELAY_S: no grow comes
    job = _job(api, job_id)
    assert job["cluster_version"] == 4 and len(_members(job)) == 2 and job["status"] == "running"
    api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
