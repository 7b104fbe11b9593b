"""POST /api/v1/policies/replay/: an unsaved definition (the editor's draft) replayed on a
job's recorded metrics, answered like the replay of a saved policy."""

import time
from datetime import UTC, datetime

import pytest
from rest_framework.test import APIClient

from controlplane.jobs.services.jobs import job_create
from controlplane.metrics.models import MetricPoint
from tests.controlplane.metric_points import run_of

pytestmark = pytest.mark.django_db

URL = "/api/v1/policies/replay/"


def doubling(when="steps_since_fired >= 100"):
    return {
        "name": "double",
        "rules": [
            {
                "name": "grow",
                "when": when,
                "action": {"type": "set_batch_size", "value": "batch_size * 2"},
                "bounds": {"max": 128},
            }
        ],
    }


@pytest.fixture
def job(user):
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
    )
    now = time.time()
    run = run_of(job)
    MetricPoint.objects.bulk_create(
        [
            MetricPoint(
                job=job,
                run=run,
                name=name,
                step=s,
                value=value,
                time=datetime.fromtimestamp(now + s, tz=UTC),
            )
            for s in range(10, 410, 10)
            for name, value in (("loss", 1.0 / s), ("batch_size", 32.0))
        ]
    )
    return job


def test_an_unsaved_definition_is_replayed_like_a_saved_policy(api, job):
    reply = api.post(URL, {"definition": doubling(), "job": job.id}, format="json")
    assert reply.status_code == 200, reply.json()
    body = reply.json()
    assert body["policy"] is None and body["version"] is None and body["job"] == job.id
    assert body["ticks"] == 40
    assert [d["step"] for d in body["decisions"]] == [100, 200, 300, 400]
    assert body["decisions"][0]["action"] == {"type": "set_batch_size", "value": 64}
    assert body["decisions"][0]["inputs"]["loss"] == pytest.approx(0.01)

    saved = api.post("/api/v1/policies/", {"definition": doubling()}, format="json").json()
    from_saved = api.post(
        f"/api/v1/policies/{saved['id']}/replay/", {"job": job.id}, format="json"
    ).json()
    assert set(from_saved) == set(body)
    assert from_saved["decisions"] == body["decisions"]


def test_an_edit_changes_the_replay_without_saving_anything(api, job):
    reply = api.post(
        URL, {"definition": doubling("steps_since_fired >= 200"), "job": job.id}, format="json"
    )
    assert [d["step"] for d in reply.json()["decisions"]] == [200, 400]
    assert api.get("/api/v1/policies/").json() == []


def test_an_invalid_definition_gets_the_errors_of_validate(api, job):
    bad = doubling("loss < 1.0 && lossy > 2")
    reply = api.post(URL, {"definition": bad, "job": job.id}, format="json")
    validated = api.post("/api/v1/policies/validate/", {"definition": bad}, format="json")
    assert reply.status_code == validated.status_code == 400
    assert reply.json() == validated.json()
    assert reply.json()["details"] == {"path": "rules[0].when", "position": 14}


def test_the_definition_is_checked_before_the_job(api):
    reply = api.post(URL, {"definition": doubling("step >"), "job": 999_999}, format="json")
    assert reply.status_code == 400 and reply.json()["details"]["path"] == "rules[0].when"


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"job": 1}, "definition"),
        ({"definition": doubling()}, "job"),
        ({"definition": doubling(), "job": "one"}, "job"),
    ],
)
def test_a_missing_or_malformed_field_is_a_400(api, body, fragment):
    reply = api.post(URL, body, format="json")
    assert reply.status_code == 400 and fragment in reply.json()["message"]


def test_an_unknown_job_and_someone_elses_job_are_both_not_found(api, other_api, job):
    missing = api.post(URL, {"definition": doubling(), "job": 999_999}, format="json")
    theirs = other_api.post(URL, {"definition": doubling(), "job": job.id}, format="json")
    assert missing.status_code == theirs.status_code == 404
    assert missing.json()["code"] == theirs.json()["code"] == "not_found"
    assert str(job.id) in theirs.json()["message"] and "not yours" in theirs.json()["message"]


def test_unauthenticated_replay_is_refused(job):
    reply = APIClient().post(URL, {"definition": doubling(), "job": job.id}, format="json")
    assert reply.status_code == 401
    assert set(reply.json()) == {"code", "message", "details"}


def test_the_endpoint_is_in_the_openapi_schema(api):
    schema = api.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/policies/replay/"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit(
        "/", 1
    )[1]
    assert set(schema["components"]["schemas"][request]["required"]) == {"definition", "job"}
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    saved = schema["paths"]["/api/v1/policies/{policy_id}/replay/"]["post"]["responses"]["200"]
    assert saved["content"]["application/json"]["schema"]["$ref"] == ok
    assert {"400", "401", "404"} <= set(operation["responses"])
