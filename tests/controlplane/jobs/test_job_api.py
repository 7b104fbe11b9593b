"""The jobs REST API: create, list, read, permissions and error shape."""

import pytest

from controlplane.jobs.models import Event, Job

pytestmark = pytest.mark.django_db

VALID = {
    "name": "digits",
    "entrypoint": "examples.digits",
    "hyperparameters": {"batch_size": 32, "lr": 0.05},
    "workers": {"initial": 2, "min": 1, "max": 4},
}


def test_creating_a_job_stores_it_pending_with_defaults(api):
    response = api.post("/api/v1/jobs/", VALID, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "pending"
    assert body["hyperparameters"] == {
        "batch_size": 32,
        "lr": 0.05,
        "steps": 1000,
        "log_every": 10,
        "seed": 0,
        "monitor_every": 1,
        "sma_alpha": 0.1,
        "checkpoint_every": 0,
        "lr_scaling": "none",
    }
    assert body["parameters"]["batch_size"] == 32
    job = Job.objects.get(id=body["id"])
    assert (job.workers_initial, job.workers_min, job.workers_max) == (2, 1, 4)
    assert Event.objects.filter(job=job, kind="state").exists()


def test_listing_shows_only_my_jobs_and_filters_by_status(api, other_api):
    mine = api.post("/api/v1/jobs/", VALID, format="json").json()["id"]
    other_api.post("/api/v1/jobs/", VALID, format="json")
    listed = api.get("/api/v1/jobs/").json()
    assert [j["id"] for j in listed["results"]] == [mine]
    assert api.get("/api/v1/jobs/?status=running").json()["results"] == []
    assert api.get("/api/v1/jobs/?status=pending").json()["count"] == 1


def test_unknown_status_filter_is_a_clear_400(api):
    response = api.get("/api/v1/jobs/?status=sleeping")
    assert response.status_code == 400
    assert "Unknown status sleeping" in response.json()["message"]


def test_someone_elses_job_is_not_found(api, other_api):
    theirs = other_api.post("/api/v1/jobs/", VALID, format="json").json()["id"]
    response = api.get(f"/api/v1/jobs/{theirs}/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_unauthenticated_request_gets_401_in_error_shape(client):
    response = client.get("/api/v1/jobs/")
    assert response.status_code == 401
    assert set(response.json()) == {"code", "message", "details"}


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"hyperparameters": {"lr": 0.1}}, "batch_size is required"),
        ({"hyperparameters": {"batch_size": 0, "lr": 0.1}}, "batch_size must be between 1"),
        (
            {"hyperparameters": {"batch_size": 32, "lr": 0.1, "epochs": 3}},
            "Unknown hyper-parameter(s) epochs",
        ),
        ({"hyperparameters": {"batch_size": "32", "lr": 0.1}}, "batch_size must be an integer"),
        ({"entrypoint": "rm -rf /"}, "entrypoint"),
        ({"workers": {"initial": 3, "min": 1, "max": 2}}, "min ≤ initial ≤ max"),
        ({"strategy": "magic"}, "strategy"),
        (
            {"hyperparameters": {"batch_size": 32, "lr": 0.1, "lr_scaling": "cubic"}},
            "lr_scaling must be one of",
        ),
        (
            {"hyperparameters": {"batch_size": 32, "lr": 0.1, "checkpoint_dir": 7}},
            "checkpoint_dir must be a string",
        ),
        (
            {"hyperparameters": {"batch_size": 32, "lr": 0.1, "checkpoint_every": 50}},
            "checkpoint_every needs checkpoint_dir",
        ),
        (
            {"hyperparameters": {"batch_size": 32, "lr": 0.1, "ring_probe_every": "often"}},
            "ring_probe_every must be an integer",
        ),
        (
            {"hyperparameters": {"batch_size": 32, "lr": 0.1, "ring_probe_every": -5}},
            "ring_probe_every must be between 0",
        ),
    ],
)
def test_bad_input_is_rejected_with_a_message_that_says_what_to_fix(api, change, fragment):
    response = api.post("/api/v1/jobs/", {**VALID, **change}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert fragment in body["message"]
    assert Job.objects.count() == 0


def test_malformed_json_is_a_400_not_a_500(api):
    response = api.post("/api/v1/jobs/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


def test_policy_of_another_user_cannot_be_attached(api, other_api):
    policy = other_api.post(
        "/api/v1/policies/",
        {
            "definition": {
                "name": "p",
                "rules": [{"name": "r", "when": "true", "action": {"type": "stop"}}],
            }
        },
        format="json",
    ).json()["id"]
    response = api.post("/api/v1/jobs/", {**VALID, "policy": policy}, format="json")
    assert response.status_code == 400
    assert "not yours" in response.json()["message"]


def test_commands_need_a_running_job(api):
    job = api.post("/api/v1/jobs/", VALID, format="json").json()["id"]
    response = api.post(
        f"/api/v1/jobs/{job}/commands/", {"action": "set_batch_size", "value": 64}, format="json"
    )
    assert response.status_code == 409
    assert "commands need a running job" in response.json()["message"]


def test_policy_validation_points_at_the_rule(api):
    response = api.post(
        "/api/v1/policies/validate/",
        {
            "definition": {
                "name": "p",
                "rules": [{"name": "r", "when": "loss <", "action": {"type": "stop"}}],
            }
        },
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["details"]["path"] == "rules[0].when"


@pytest.mark.parametrize("strategy", ["ssgd", "sma", "pair"])
def test_every_synchronisation_strategy_of_the_runtime_is_accepted(api, strategy):
    response = api.post("/api/v1/jobs/", {**VALID, "strategy": strategy}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["strategy"] == strategy


def test_an_idempotency_key_makes_a_retried_create_return_the_first_job(api):
    first = api.post("/api/v1/jobs/", VALID, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 201
    # The same request again (a client retrying after a lost response), keys reordered.
    again = api.post(
        "/api/v1/jobs/",
        dict(reversed(list(VALID.items()))),
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-1",
    )
    assert again.status_code == 200 and again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = {**VALID, "name": "another"}
    clash = api.post("/api/v1/jobs/", other, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert clash.status_code == 422
    assert clash.json()["code"] == "unprocessable"
    assert f"job {first.json()['id']}" in clash.json()["message"]
    assert Job.objects.count() == 1
    # Another key, or none, makes a new job.
    assert (
        api.post("/api/v1/jobs/", other, format="json", HTTP_IDEMPOTENCY_KEY="k-2").status_code
        == 201
    )
    assert api.post("/api/v1/jobs/", other, format="json").status_code == 201
    assert Job.objects.count() == 3


def test_idempotency_keys_are_per_user_and_checked_for_form(api, other_api):
    mine = api.post("/api/v1/jobs/", VALID, format="json", HTTP_IDEMPOTENCY_KEY="same")
    theirs = other_api.post("/api/v1/jobs/", VALID, format="json", HTTP_IDEMPOTENCY_KEY="same")
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]
    bad = api.post("/api/v1/jobs/", VALID, format="json", HTTP_IDEMPOTENCY_KEY="x" * 101)
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["message"]
