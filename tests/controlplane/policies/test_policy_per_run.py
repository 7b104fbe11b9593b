"""Policy state is per run: after a restart from scratch, the policy sees only the new
run's metrics (peaks, windows, latest values) and its rules' history (last firing,
cooldown, last_fire) starts over; decisions say which run they were made in, and replays
read one run."""

from __future__ import annotations

import time

import pytest

from controlplane.jobs.models import Command, Job, Worker
from controlplane.jobs.services.jobs import job_create, job_restart
from controlplane.metrics.services import metrics_ingest
from controlplane.policies.models import Decision
from controlplane.policies.services import job_policy_evaluate, policy_create
from tests.controlplane.jobs.agent_steps import fail as _fail
from tests.controlplane.jobs.agent_steps import start as _start

pytestmark = pytest.mark.django_db

# Interference: throughput fell below half its peak.
DROP = {
    "name": "interference",
    "when": "has(peak.throughput) && throughput < peak.throughput * 0.5",
    "action": {"type": "set_topology", "value": "tree"},
    "cooldown_s": 3600,
}


def _job_with_policy(user, rule=DROP) -> Job:
    policy = policy_create(owner=user, definition={"name": "p", "rules": [rule]})
    job = job_create(
        owner=user,
        name="j",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 32, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
        policy=policy,
    )
    return _start(job)


def _throughput(job: Job, batch_id: str, values: dict[int, float]) -> None:
    node = Worker.objects.filter(run_id=job.current_run_id).select_related("node").first().node
    metrics_ingest(
        node=node,
        batch_id=batch_id,
        points=[
            {"job": job.id, "name": "throughput", "step": s, "value": v, "time": time.time()}
            for s, v in values.items()
        ],
    )


def _restart_from_scratch(job: Job) -> Job:
    # Run 1's commands are done with (applied or not, they are not run 2's business).
    Command.objects.filter(job=job, state__in=Command.IN_FLIGHT).update(state=Command.State.APPLIED)
    job = _fail(job)
    job_restart(job=job, actor="user:alice", resume_from=None)
    return _start(Job.objects.get(id=job.id))


def test_a_rule_on_peak_does_not_fire_in_run_2_from_run_1s_peak(user, nodes):
    job = _job_with_policy(user)
    _throughput(job, "r1", {10: 1000.0, 20: 1000.0})
    assert job_policy_evaluate(job_id=job.id) == []  # at its peak
    job = _restart_from_scratch(job)
    # Run 2 is slower from the start (say, another node): 400 < 1000 / 2, but run 1's peak
    # says nothing about run 2.
    _throughput(job, "r2", {10: 400.0, 20: 400.0})
    assert job_policy_evaluate(job_id=job.id) == []
    assert not Decision.objects.exists()
    # Run 2's own peak and drop do fire.
    _throughput(job, "r2b", {30: 900.0, 40: 300.0})
    [decision] = job_policy_evaluate(job_id=job.id)
    assert decision.run == job.current_run and decision.run.number == 2
    assert decision.inputs["throughput"] == 300.0


def test_a_rule_that_fired_in_run_1_is_not_in_cooldown_in_run_2(user, nodes):
    job = _job_with_policy(user)
    _throughput(job, "r1", {10: 1000.0, 20: 100.0})
    [first] = job_policy_evaluate(job_id=job.id)
    assert first.run.number == 1
    job = _restart_from_scratch(job)
    _throughput(job, "r2", {10: 1000.0, 20: 100.0})
    [second] = job_policy_evaluate(job_id=job.id)  # the hour's cooldown was run 1's
    assert second.run.number == 2
    # Never fired in run 2: counted from the run's start, not from run 1's firing.
    assert second.inputs["steps_since_fired"] == second.inputs["step"] == 20


def test_decisions_list_shows_each_decisions_run_and_filters_by_run(api, user, nodes):
    job = _job_with_policy(user)
    _throughput(job, "r1", {10: 1000.0, 20: 100.0})
    job_policy_evaluate(job_id=job.id)
    job = _restart_from_scratch(job)
    _throughput(job, "r2", {10: 1000.0, 20: 100.0})
    job_policy_evaluate(job_id=job.id)
    url = f"/api/v1/jobs/{job.id}/decisions/"
    assert [d["run"] for d in api.get(url).json()] == [1, 2]  # default: every run's, oldest first
    assert [d["run"] for d in api.get(f"{url}?run=1").json()] == [1]
    assert [d["run"] for d in api.get(f"{url}?run=2").json()] == [2]
    bad = api.get(f"{url}?run=two")
    assert bad.status_code == 400 and "run must be an integer" in bad.json()["message"]
    unknown = api.get(f"{url}?run=5")
    assert unknown.status_code == 404 and unknown.json()["details"]["runs"] == [1, 2]


def test_a_decision_waiting_for_approval_from_an_ended_run_can_be_rejected_not_approved(
    api, user, nodes
):
    job = _job_with_policy(user, rule={**DROP, "requires_approval": True})
    _throughput(job, "r1", {10: 1000.0, 20: 100.0})
    [waiting] = job_policy_evaluate(job_id=job.id)
    assert waiting.outcome == "pending_approval"
    job = _restart_from_scratch(job)
    # Run 1's open question does not hold run 2's policy up.
    _throughput(job, "r2", {10: 1000.0, 20: 100.0})
    [fresh] = job_policy_evaluate(job_id=job.id)
    assert fresh.run.number == 2
    approve = api.post(f"/api/v1/jobs/{job.id}/decisions/{waiting.id}/approve/")
    assert (
        approve.status_code == 409 and "made in run 1, which has ended" in approve.json()["message"]
    )
    assert api.post(f"/api/v1/jobs/{job.id}/decisions/{waiting.id}/reject/").status_code == 200


def test_replay_reads_the_current_run_by_default_and_another_when_asked(api, user, nodes):
    job = _job_with_policy(user)
    _throughput(job, "r1", {10: 1000.0, 20: 100.0, 30: 100.0})
    job = _restart_from_scratch(job)
    _throughput(job, "r2", {10: 400.0, 20: 400.0})
    url = f"/api/v1/policies/{job.policy_id}/replay/"
    current = api.post(url, {"job": job.id}, format="json").json()
    assert (current["run"], current["ticks"], current["decisions"]) == (2, 2, [])
    earlier = api.post(url, {"job": job.id, "run": 1}, format="json").json()
    assert (earlier["run"], earlier["ticks"]) == (1, 3)
    assert [d["step"] for d in earlier["decisions"]] == [20]
    draft = api.post(
        "/api/v1/policies/replay/",
        {"definition": {"name": "d", "rules": [DROP]}, "job": job.id, "run": 1},
        format="json",
    ).json()
    assert draft["run"] == 1 and [d["step"] for d in draft["decisions"]] == [20]
    missing = api.post(url, {"job": job.id, "run": 3}, format="json")
    assert missing.status_code == 404 and missing.json()["details"]["runs"] == [1, 2]
    bad = api.post(url, {"job": job.id, "run": "first"}, format="json")
    assert bad.status_code == 400 and "run" in bad.json()["message"]
