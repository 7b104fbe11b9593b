"""GET /api/v1/jobs/{id}/adaptations/ on real PostgreSQL: a policy's set_batch_size,
applied by the job's node at a step, listed with the throughput, efficiency and goodput
the stored metric points give before and after it and the time it saved (the figures of
tests/controlplane/policies/test_adaptation_payoff.py, worked out by hand there); a user's
command too; another user's job is a 404, and a bad window a 400 naming it."""

from __future__ import annotations

import pytest

from controlplane.jobs.models import Command, Job, Worker
from controlplane.jobs.services.commands import command_finish, command_issue
from controlplane.jobs.services.jobs import job_create
from controlplane.metrics.services import metrics_ingest
from controlplane.policies.services import job_policy_evaluate, policy_create
from tests.controlplane.jobs.agent_steps import start

pytestmark = pytest.mark.django_db

T0 = 1_790_000_000.0  # a fixed epoch: the windows' times are the test's own
STEPS = [10, 20, 30, 40, 50, 60, 70, 80]
TIMES = [1, 2, 3, 4, 6.28, 7.56, 8.84, 10.12]
THROUGHPUT = [100, 310, 330, 320, 150, 490, 510, 500]
BATCH = [32] * 4 + [64] * 4


def _ingest(job: Job, batch_id: str, rows: list[tuple[int, float]], names) -> None:
    node = Worker.objects.filter(run_id=job.current_run_id).first().node
    points = []
    for i, _ in rows:
        step, t = STEPS[i], T0 + TIMES[i]
        for name, values in names.items():
            points.append(
                {"job": job.id, "name": name, "step": step, "value": values[i], "time": t}
            )
    metrics_ingest(node=node, batch_id=batch_id, points=points)


def _series(indices):
    return [(i, 0.0) for i in indices]


NAMES = {
    "throughput": THROUGHPUT,
    "batch_size": BATCH,
    "workers": [1] * 8,
    "gns": [96.0] * 8,
}


def _running_job(user, policy=None) -> Job:
    job = job_create(
        owner=user,
        name="adapting",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 32, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=2,
        strategy="ssgd",
        topology="ring",
        policy=policy,
    )
    return start(job)


def test_policy_batch_change_is_listed_with_its_effect(user, nodes, api):
    policy = policy_create(
        owner=user,
        definition={
            "name": "grow",
            "rules": [
                {
                    "name": "double at 40",
                    "when": "step >= 40 && batch_size == 32",
                    "action": {"type": "set_batch_size", "value": "batch_size * 2"},
                }
            ],
        },
    )
    job = _running_job(user, policy)
    reply = api.get(f"/api/v1/jobs/{job.id}/adaptations/")
    assert reply.status_code == 200, reply.json()
    assert reply.json() == {
        "base_batch": 32.0,
        "window": 10,
        "time_saved_s": None,
        "adaptations": [],
    }

    _ingest(job, "before", _series(range(4)), NAMES)
    [decision] = job_policy_evaluate(job_id=job.id)
    [command] = Command.objects.filter(job=job, type="set_batch_size")
    # Issued, not applied yet: listed, without figures.
    [row] = api.get(f"/api/v1/jobs/{job.id}/adaptations/").json()["adaptations"]
    assert row["state"] in ("pending", "sent") and row["before"] is None
    assert row["note"] == "not applied yet"

    command_finish(node=command.node, command_id=command.id, ok=True, step=40)
    _ingest(job, "after", _series(range(4, 8)), NAMES)

    body = api.get(f"/api/v1/jobs/{job.id}/adaptations/").json()
    [row] = body["adaptations"]
    assert row["action"] == "set_batch_size"
    assert (row["value_from"], row["value_to"], row["state"], row["step"]) == (
        32,
        64,
        "applied",
        40,
    )
    assert row["issued_by"] == "policy:grow/double at 40"
    assert row["decision"]["id"] == decision.id and row["decision"]["rule"] == "double at 40"
    assert row["before"]["points"] == 3 and row["before"]["throughput"] == 320
    assert row["after"]["points"] == 3 and row["after"]["throughput"] == 500
    assert row["gns"] == 96
    assert row["before"]["efficiency"] == pytest.approx(1.0)
    assert row["after"]["efficiency"] == pytest.approx(0.8)
    assert row["after"]["goodput"] == pytest.approx(400.0)
    assert row["span_steps"] == 40 and row["span_s"] == pytest.approx(6.12)
    assert row["time_saved_s"] == pytest.approx(0.28)
    assert body["time_saved_s"] == pytest.approx(0.28)

    # A smaller window: the last point before, the first (kept) point after.
    row = api.get(f"/api/v1/jobs/{job.id}/adaptations/?window=1").json()["adaptations"][0]
    assert (row["before"]["first_step"], row["after"]["first_step"]) == (40, 60)
    assert (row["before"]["throughput"], row["after"]["throughput"]) == (320, 490)


def test_user_scale_is_listed_and_run_filter_and_window_are_checked(user, nodes, api):
    job = _running_job(user)
    _ingest(job, "b", _series(range(4)), {**NAMES, "batch_size": [32] * 8})
    [lr] = command_issue(job=job, type="set_lr", value=0.2, issued_by="user:alice")
    command_finish(node=lr.node, command_id=lr.id, ok=True, step=40)
    rows = api.get(f"/api/v1/jobs/{job.id}/adaptations/?run=1").json()["adaptations"]
    assert [(r["action"], r["value_to"], r["issued_by"], r["decision"]) for r in rows] == [
        ("set_lr", 0.2, "user:alice", None)
    ]
    assert rows[0]["after"]["points"] == 0
    assert "after the change yet" in rows[0]["note"]

    reply = api.get(f"/api/v1/jobs/{job.id}/adaptations/?window=0")
    assert reply.status_code == 400 and "window" in reply.json()["message"]
    reply = api.get(f"/api/v1/jobs/{job.id}/adaptations/?run=7")
    assert reply.status_code == 404


def test_another_users_job_is_not_found(user, nodes, other_api):
    job = _running_job(user)
    reply = other_api.get(f"/api/v1/jobs/{job.id}/adaptations/")
    assert reply.status_code == 404
