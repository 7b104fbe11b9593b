"""Policies over REST: versions, enable/disable, validation of names, approval, limits."""

import pytest

from controlplane.jobs.models import Command, Job
from controlplane.policies.models import Decision
from controlplane.policies.services import job_policy_evaluate
from tests.controlplane.policies.policy_steps import running_job

pytestmark = pytest.mark.django_db


def definition(when="steps_since_fired >= 100", **rule_extra):
    return {
        "name": "p",
        "rules": [
            {
                "name": "grow",
                "when": when,
                "action": {"type": "set_batch_size", "value": "batch_size * 2"},
                "bounds": {"max": 128},
                **rule_extra,
            }
        ],
    }


def test_put_makes_a_new_version_and_old_ones_stay_readable(api):
    policy = api.post("/api/v1/policies/", {"definition": definition()}, format="json").json()
    assert policy["version"] == 1
    updated = api.put(
        f"/api/v1/policies/{policy['id']}/", {"definition": definition("step > 5")}, format="json"
    )
    assert updated.status_code == 200 and updated.json()["version"] == 2
    versions = api.get(f"/api/v1/policies/{policy['id']}/versions/").json()
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[1]["definition"]["rules"][0]["when"] == "steps_since_fired >= 100"
    assert versions[0]["created_by"] == "alice"


def test_invalid_put_keeps_the_stored_version(api):
    policy = api.post("/api/v1/policies/", {"definition": definition()}, format="json").json()
    bad = api.put(
        f"/api/v1/policies/{policy['id']}/", {"definition": definition("step >")}, format="json"
    )
    assert bad.status_code == 400 and bad.json()["details"]["path"] == "rules[0].when"
    assert api.get(f"/api/v1/policies/{policy['id']}/").json()["version"] == 1


def test_unknown_name_in_a_condition_is_an_error_at_its_position(api):
    response = api.post(
        "/api/v1/policies/validate/",
        {"definition": definition("loss < 1.0 && lossy > 2")},
        format="json",
    )
    assert response.status_code == 400
    body = response.json()
    assert "unknown name 'lossy'" in body["message"]
    assert body["details"] == {"path": "rules[0].when", "position": 14}
    ok = api.post(
        "/api/v1/policies/validate/",
        {"definition": definition("has(metrics.my_metric)")},
        format="json",
    )
    assert ok.status_code == 200


def test_other_users_cannot_read_change_or_delete_a_policy(api, other_api):
    policy = api.post("/api/v1/policies/", {"definition": definition()}, format="json").json()
    url = f"/api/v1/policies/{policy['id']}/"
    assert other_api.get(url).status_code == 404
    assert other_api.put(url, {"enabled": False}, format="json").status_code == 404
    assert other_api.delete(url).status_code == 404
    assert api.delete(url).status_code == 204
    assert api.get(url).status_code == 404


def test_disabled_policy_is_not_evaluated(api, user, node):
    job = running_job(user, node)
    api.put(f"/api/v1/policies/{job.policy_id}/", {"enabled": False}, format="json")
    assert job_policy_evaluate(job_id=job.id) == []


def test_decision_that_requires_approval_waits_for_a_click(api, user, node):
    job = running_job(user, node)
    api.put(
        f"/api/v1/policies/{job.policy_id}/",
        {"definition": definition(requires_approval=True)},
        format="json",
    )
    [decision] = job_policy_evaluate(job_id=job.id)
    assert decision.outcome == "pending_approval" and decision.command is None
    assert not Command.objects.filter(job=job, type="set_batch_size").exists()
    Job.objects.filter(id=job.id).update(last_step=10_000)
    assert job_policy_evaluate(job_id=job.id) == []  # one open question at a time
    listed = api.get(f"/api/v1/jobs/{job.id}/decisions/").json()
    assert [d["outcome"] for d in listed] == ["pending_approval"]
    approved = api.post(f"/api/v1/jobs/{job.id}/decisions/{decision.id}/approve/")
    assert approved.status_code == 200 and approved.json()["outcome"] == "approved"
    command = Command.objects.get(job=job, type="set_batch_size")
    assert command.payload == {"value": 64} and "approved by alice" in command.issued_by
    again = api.post(f"/api/v1/jobs/{job.id}/decisions/{decision.id}/reject/")
    assert again.status_code == 409


def test_rejected_decision_issues_nothing(api, user, node):
    job = running_job(user, node)
    api.put(
        f"/api/v1/policies/{job.policy_id}/",
        {"definition": definition(requires_approval=True)},
        format="json",
    )
    [decision] = job_policy_evaluate(job_id=job.id)
    assert (
        api.post(f"/api/v1/jobs/{job.id}/decisions/{decision.id}/reject/").json()["outcome"]
        == "rejected"
    )
    assert not Command.objects.filter(job=job, type="set_batch_size").exists()


def test_max_per_hour_limits_firings(api, user, node):
    job = running_job(user, node)
    api.put(
        f"/api/v1/policies/{job.policy_id}/",
        {
            "definition": {
                "name": "p",
                "dry_run": True,
                "rules": [
                    {
                        "name": "grow",
                        "when": "true",
                        "max_per_hour": 2,
                        "action": {"type": "set_batch_size", "value": "batch_size * 2"},
                    }
                ],
            }
        },
        format="json",
    )
    fired = sum(len(job_policy_evaluate(job_id=job.id)) for _ in range(5))
    assert fired == 2
    assert Decision.objects.filter(job=job).count() == 2
