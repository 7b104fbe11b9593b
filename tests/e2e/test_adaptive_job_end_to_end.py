"""The demo path end to end, with real processes: REST create → placement (Celery) →
agent → 2 TensorFlow workers (native ring allreduce) → metrics stored → policy rule
fires (Celery beat) → set_batch_size applied by both workers at the same step → cancel.
"""

import pytest

from devtools.devstack import ApiClient
from tests.e2e.conftest import wait_for, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=False)]

POLICY = {
    "name": "double every 200 steps",
    "rules": [
        {
            "name": "grow batch",
            "when": "steps_since_fired >= 200",
            "action": {"type": "set_batch_size", "value": "batch_size * 2"},
            "bounds": {"max": 128},
        }
    ],
}


def series(api: ApiClient, job_id: int, name: str) -> dict:
    status, body = api.get(f"/api/v1/jobs/{job_id}/metrics/?names={name}&max_points=100000")
    assert status == 200, body
    return {s["rank"]: s for s in body["series"]}


def first_step_with(s: dict, value: float) -> int | None:
    return next((step for step, v in zip(s["step"], s["value"], strict=True) if v == value), None)


def test_policy_changes_batch_size_on_every_worker_at_the_same_step(stack):
    api = stack.api
    status, policy = api.post("/api/v1/policies/", {"definition": POLICY})
    assert status == 201, policy
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "e2e digits",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 1_000_000, "log_every": 10},
            "workers": {"initial": 2},
            "policy": policy["id"],
        },
    )
    assert status == 201, job
    job_id = job["id"]

    wait_for_job(
        api,
        job_id,
        lambda j: j["status"] == "running",
        timeout_s=120,
        what="the job to run",
        stack=stack,
    )
    detail = api.get(f"/api/v1/jobs/{job_id}/")[1]
    assert [w["rank"] for w in detail["workers"]] == [0, 1]
    assert all(w["port"] for w in detail["workers"])

    # Two doublings: 32 → 64 → 128 (the bound).
    wait_for_job(
        api,
        job_id,
        lambda j: j["parameters"]["batch_size"] == 128,
        timeout_s=240,
        what="the policy to double the batch size twice",
        stack=stack,
    )

    commands = [
        c for c in api.get(f"/api/v1/jobs/{job_id}/commands/")[1] if c["action"] == "set_batch_size"
    ]
    assert [c["payload"]["value"] for c in commands] == [64, 128]
    assert all(c["state"] == "applied" for c in commands)
    assert all(c["issued_by"] == "policy:double every 200 steps/grow batch" for c in commands)

    # Each worker reports its batch size per step; the change appears at the same step on
    # both ranks, and it is the step the control plane recorded for the command.
    wait_for(
        lambda: all(
            first_step_with(s, 128.0) is not None
            for r, s in series(api, job_id, "batch_size").items()
            if r is not None
        ),
        timeout_s=30,
        what="the workers' batch_size metric to reach 128",
        stack=stack,
    )
    per_rank = {r: s for r, s in series(api, job_id, "batch_size").items() if r is not None}
    assert set(per_rank) == {0, 1}
    for command in commands:
        value = float(command["payload"]["value"])
        steps = {rank: first_step_with(s, value) for rank, s in per_rank.items()}
        assert steps[0] == steps[1] == command["applied_step"], (value, steps, command)
    assert commands[0]["applied_step"] < commands[1]["applied_step"]

    # Metrics were stored: whole-job loss falls as training goes on.
    loss = series(api, job_id, "loss")[None]
    assert loss["points"] >= 20
    assert min(loss["value"][-5:]) < loss["value"][0]

    events = api.get(f"/api/v1/jobs/{job_id}/events/")[1]
    decisions = [e for e in events if e["kind"] == "decision"]
    assert len(decisions) == 2 and decisions[0]["data"]["inputs"]["batch_size"] == 32

    # Cancelling stops the workers through a stop command.
    status, body = api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
    assert status == 200 and body["status"] == "cancelled", body
    wait_for(
        lambda: any(
            c["action"] == "stop" and c["state"] == "applied"
            for c in api.get(f"/api/v1/jobs/{job_id}/commands/")[1]
        ),
        timeout_s=60,
        what="the workers to apply the stop command",
        stack=stack,
    )
    wait_for(
        lambda: all(
            w["state"] == "exited" for w in api.get(f"/api/v1/jobs/{job_id}/")[1]["workers"]
        ),
        timeout_s=60,
        what="the workers to exit",
        stack=stack,
    )


def test_job_that_runs_to_completion_succeeds_with_good_accuracy(stack):
    api = stack.api
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "e2e digits short",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 64, "lr": 0.05, "steps": 400, "log_every": 20},
            "workers": {"initial": 2},
        },
    )
    assert status == 201, job
    wait_for(
        lambda: api.get(f"/api/v1/jobs/{job['id']}/")[1]["status"] in ("succeeded", "failed"),
        timeout_s=180,
        what="the job to finish",
        stack=stack,
    )
    detail = api.get(f"/api/v1/jobs/{job['id']}/")[1]
    assert detail["status"] == "succeeded", detail["status_reason"]
    accuracy = series(api, job["id"], "val_accuracy")[None]["value"][-1]
    assert accuracy >= 0.9


def test_gns_template_grows_the_batch_live_on_digits(stack):
    api = stack.api
    status, templates = api.get("/api/v1/policies/templates/")
    assert status == 200
    definition = next(t["definition"] for t in templates if t["id"] == "gns-adaptive-batch")
    status, policy = api.post("/api/v1/policies/", {"definition": definition})
    assert status == 201, policy
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "e2e gns",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 16, "lr": 0.05, "steps": 1_000_000, "log_every": 20},
            "workers": {"initial": 2},
            "policy": policy["id"],
        },
    )
    assert status == 201, job
    wait_for_job(
        api,
        job["id"],
        lambda j: j["parameters"]["batch_size"] >= 32,
        timeout_s=180,
        what="the noise-scale rule to grow the batch",
        stack=stack,
    )
    decisions = [
        e for e in api.get(f"/api/v1/jobs/{job['id']}/events/")[1] if e["kind"] == "decision"
    ]
    inputs = decisions[0]["data"]["inputs"]
    assert inputs["gns"] > 2 * inputs["batch_size"] == 32
    api.post(f"/api/v1/jobs/{job['id']}/cancel/", {})
