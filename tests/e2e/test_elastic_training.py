"""A real TensorFlow job (examples.digits) scaled through the whole stack: the control
plane places a warm standby on a second agent, lets it in with a new cluster version
once it reported standby, and later shrinks the job again; training goes on throughout."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import _stack, wait_for, wait_for_job

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_node_stack(tmp_path_factory):
    yield from _stack(
        tmp_path_factory, suffix="elastic-tf", agents=2, slots=2, distinct_addresses=True
    )


def _scale(stack, job_id, value, *, timeout_s):
    status, commands = stack.api.post(
        f"/api/v1/jobs/{job_id}/commands/", {"action": "scale_workers", "value": value}
    )
    assert status == 201, commands
    wait_for(
        lambda: all(
            c["state"] == "applied"
            for c in stack.api.get(f"/api/v1/jobs/{job_id}/commands/")[1]
            if c["action"] == "scale_workers"
        ),
        timeout_s=timeout_s,
        what=f"scale_workers {value} to be applied",
        stack=stack,
    )
    return wait_for_job(
        stack.api,
        job_id,
        lambda j: j["status"] == "running" and j,
        timeout_s=30,
        what="the job to run again",
        stack=stack,
    )


def test_digits_job_grows_onto_a_second_node_and_shrinks_while_training(two_node_stack):
    stack, api = two_node_stack, two_node_stack.api
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "elastic digits",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 48, "lr": 0.05, "steps": 1_000_000, "log_every": 10},
            "workers": {"initial": 2, "min": 1, "max": 3},
        },
    )
    assert status == 201, job
    job_id = job["id"]
    job = wait_for_job(
        api,
        job_id,
        lambda j: j["status"] == "running" and j["last_step"] >= 20 and j,
        timeout_s=180,
        what="training to start",
        stack=stack,
    )

    job = _scale(stack, job_id, 3, timeout_s=240)
    assert job["cluster_version"] == 2 and job["parameters"]["workers"] == 3
    assert len({w["node"] for w in job["workers"] if w["cluster_rank"] is not None}) == 2
    step_at_grow = job["last_step"]
    wait_for_job(
        api,
        job_id,
        lambda j: j["last_step"] >= step_at_grow + 30,
        timeout_s=120,
        what="training to go on with 3 workers",
        stack=stack,
    )

    job = _scale(stack, job_id, 2, timeout_s=120)
    assert job["cluster_version"] == 3
    assert sorted(w["state"] for w in job["workers"])[0] in ("exited", "left")
    step_at_shrink = job["last_step"]
    wait_for_job(
        api,
        job_id,
        lambda j: j["last_step"] >= step_at_shrink + 30,
        timeout_s=120,
        what="training to go on with 2 workers",
        stack=stack,
    )

    status, body = api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
    assert body["status"] == "cancelled"
