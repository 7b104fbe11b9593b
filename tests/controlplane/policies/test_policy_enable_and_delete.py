"""Turning a policy off and on, and deleting one: a disabled policy is not evaluated, and a
policy that an unfinished job uses cannot be deleted from under it."""

import pytest

from controlplane.jobs.models import Job
from controlplane.jobs.services.jobs import job_create
from controlplane.policies.models import Decision, Policy
from controlplane.policies.services import job_policy_evaluate
from tests.controlplane.policies.policy_steps import running_job

pytestmark = pytest.mark.django_db


def test_a_disabled_policy_is_not_evaluated_until_enabled_again(api, user, node):
    job = running_job(user, node)
    url = f"/api/v1/policies/{job.policy_id}/"
    off = api.put(url, {"enabled": False}, format="json")
    assert off.status_code == 200 and off.json()["enabled"] is False
    assert off.json()["version"] == 1  # switching is not a new version
    assert job_policy_evaluate(job_id=job.id) == []
    assert not Decision.objects.filter(job=job).exists()
    on = api.put(url, {"enabled": True}, format="json")
    assert on.status_code == 200 and on.json()["enabled"] is True
    [decision] = job_policy_evaluate(job_id=job.id)
    assert decision.rule == "grow"


def test_switching_restarts_the_hysteresis_counters_of_its_jobs(api, user, node):
    job = running_job(user, node)
    Job.objects.filter(id=job.id).update(policy_state={"grow": {"consecutive_true": 3}})
    api.put(f"/api/v1/policies/{job.policy_id}/", {"enabled": False}, format="json")
    assert Job.objects.get(id=job.id).policy_state == {}


def test_disabling_twice_changes_nothing(api, user, node):
    job = running_job(user, node)
    url = f"/api/v1/policies/{job.policy_id}/"
    api.put(url, {"enabled": False}, format="json")
    Job.objects.filter(id=job.id).update(policy_state={"grow": {"consecutive_true": 1}})
    again = api.put(url, {"enabled": False}, format="json")
    assert again.status_code == 200 and again.json()["enabled"] is False
    assert Job.objects.get(id=job.id).policy_state == {"grow": {"consecutive_true": 1}}


def test_enabled_must_be_a_boolean(api, user, node):
    job = running_job(user, node)
    reply = api.put(f"/api/v1/policies/{job.policy_id}/", {"enabled": "perhaps"}, format="json")
    assert reply.status_code == 400 and "enabled" in reply.json()["message"]


def test_a_policy_used_by_a_running_job_is_not_deleted(api, user, node):
    job = running_job(user, node)
    reply = api.delete(f"/api/v1/policies/{job.policy_id}/")
    assert reply.status_code == 409
    body = reply.json()
    assert body["code"] == "conflict" and body["details"] == {"jobs": [job.id]}
    assert f"#{job.id}" in body["message"] and "disable" in body["message"]
    assert Policy.objects.filter(id=job.policy_id).exists()
    assert Job.objects.get(id=job.id).policy_id == job.policy_id


def test_a_pending_job_also_keeps_its_policy(api, user):
    policy = api.post(
        "/api/v1/policies/",
        {
            "definition": {
                "name": "p",
                "rules": [{"name": "r", "when": "true", "action": {"type": "checkpoint"}}],
            }
        },
        format="json",
    ).json()
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
        policy=Policy.objects.get(id=policy["id"]),
    )
    assert api.delete(f"/api/v1/policies/{policy['id']}/").status_code == 409
    Job.objects.filter(id=job.id).update(status=Job.Status.CANCELLED)
    assert api.delete(f"/api/v1/policies/{policy['id']}/").status_code == 204


def test_once_its_jobs_have_ended_a_policy_is_deleted_and_they_keep_running_records(
    api, user, node
):
    job = running_job(user, node)
    policy_id = job.policy_id
    Job.objects.filter(id=job.id).update(status=Job.Status.SUCCEEDED)
    assert api.delete(f"/api/v1/policies/{policy_id}/").status_code == 204
    assert not Policy.objects.filter(id=policy_id).exists()
    finished = Job.objects.get(id=job.id)
    assert finished.policy_id is None and finished.status == Job.Status.SUCCEEDED
    assert api.get(f"/api/v1/jobs/{job.id}/").status_code == 200
    assert api.delete(f"/api/v1/policies/{policy_id}/").status_code == 404
