"""Node selectors: a job's workers go only to nodes whose labels contain every selector
pair, at creation and on every grow; a job no enrolled node can hold says so and waits."""

from __future__ import annotations

import pytest

from controlplane.jobs.models import Command, Event, Job, Node, Worker
from controlplane.jobs.services.jobs import job_cancel, job_create, node_selector_clean
from controlplane.jobs.services.nodes import join_token_create, node_enrol
from controlplane.jobs.services.scheduling import job_place
from tests.controlplane.jobs.agent_steps import run_placed as _run

pytestmark = pytest.mark.django_db

VALID = {
    "name": "digits",
    "entrypoint": "examples.digits",
    "hyperparameters": {"batch_size": 32, "lr": 0.05},
    "workers": {"initial": 2, "min": 1, "max": 4},
}


def _enrol(name: str, *, slots: int = 2, labels: dict | None = None) -> Node:
    _, token = join_token_create(label="test")
    node, _ = node_enrol(
        join_token=token, name=name, address=f"{name}.local", slots=slots, labels=labels or {}
    )
    return node


def _job(user, *, selector: dict, initial: int = 2, low: int = 1, high: int = 4) -> Job:
    return job_create(
        owner=user,
        name="j",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 32, "lr": 0.1},
        workers_initial=initial,
        workers_min=low,
        workers_max=high,
        strategy="ssgd",
        topology="ring",
        node_selector=selector,
    )


def _nodes_of(job) -> set[str]:
    return set(Worker.objects.filter(job=job).values_list("node__name", flat=True))


# --- the API -------------------------------------------------------------------------------


def test_a_job_with_a_node_selector_shows_it_in_its_detail(api):
    response = api.post(
        "/api/v1/jobs/", {**VALID, "node_selector": {"gpu": "a100", "zone": "eu-1"}}, format="json"
    )
    assert response.status_code == 201, response.json()
    assert response.json()["node_selector"] == {"gpu": "a100", "zone": "eu-1"}
    detail = api.get(f"/api/v1/jobs/{response.json()['id']}/").json()
    assert detail["node_selector"] == {"gpu": "a100", "zone": "eu-1"}
    assert Job.objects.get(id=detail["id"]).node_selector == {"gpu": "a100", "zone": "eu-1"}


def test_a_job_without_a_node_selector_may_run_anywhere(api):
    response = api.post("/api/v1/jobs/", VALID, format="json")
    assert response.status_code == 201 and response.json()["node_selector"] == {}


@pytest.mark.parametrize(
    "selector, fragment",
    [
        (["gpu=a100"], "node_selector must be an object of label → value strings"),
        ("gpu=a100", "node_selector must be an object"),
        ({"gpu": 100}, "node_selector['gpu'] must be a string"),
        ({"gpu": {"model": "a100"}}, "must be a string (labels are flat"),
        ({"gpu": ["a100"]}, "got an array"),
        ({"gpu": ""}, "must be 1 to 200 printable characters"),
        ({"gpu": "a" * 201}, "must be 1 to 200"),
        ({"": "a100"}, "label names must be 1 to 100 printable characters"),
        ({"gpu\n": "a100"}, "label names must be"),
        ({f"label{i}": "x" for i in range(21)}, "at most 20 labels; got 21"),
        (None, "node_selector: This field may not be null"),
    ],
)
def test_a_bad_node_selector_is_a_400_that_says_what_to_fix(api, selector, fragment):
    response = api.post("/api/v1/jobs/", {**VALID, "node_selector": selector}, format="json")
    assert response.status_code == 400, response.json()
    body = response.json()
    assert body["code"] == "invalid" and fragment in body["message"], body
    assert Job.objects.count() == 0


def test_twenty_labels_are_accepted():
    assert len(node_selector_clean({f"label{i}": "x" for i in range(20)})) == 20


def test_the_openapi_schema_describes_the_node_selector(client):
    schema = client.get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]
    ref = schema["paths"]["/api/v1/jobs/"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]["$ref"]
    field = components[ref.rsplit("/", 1)[-1]]["properties"]["node_selector"]
    assert field["type"] == "object" and field["additionalProperties"]["type"] == "string"
    assert field["maxProperties"] == 20
    assert "node_selector" in components["JobOutput"]["properties"]


# --- initial placement ---------------------------------------------------------------------


def test_workers_go_only_to_nodes_with_every_selected_label(user):
    _enrol("plain", slots=8)
    _enrol("wrong-zone", slots=2, labels={"gpu": "a100", "zone": "us-1"})
    _enrol("gpu-a", slots=1, labels={"gpu": "a100", "zone": "eu-1", "rack": "r1"})
    _enrol("gpu-b", slots=1, labels={"gpu": "a100", "zone": "eu-1"})
    job = _job(user, selector={"gpu": "a100", "zone": "eu-1"})
    assert job_place(job_id=job.id)
    assert _nodes_of(job) == {"gpu-a", "gpu-b"}
    assert set(
        Command.objects.filter(job=job, type="start").values_list("node__name", flat=True)
    ) == {"gpu-a", "gpu-b"}


def test_a_job_no_enrolled_node_matches_stays_pending_and_says_why_once(user):
    _enrol("plain", slots=8, labels={"gpu": "v100"})
    job = _job(user, selector={"gpu": "a100"})
    assert not job_place(job_id=job.id)
    assert not job_place(job_id=job.id)  # the periodic sweep tries again
    job.refresh_from_db()
    assert job.status == "pending"
    assert "no enrolled node has labels matching node_selector gpu=a100" in job.status_reason
    events = Event.objects.filter(job=job, message__startswith="pending:")
    assert events.count() == 1 and events.get().data["node_selector"] == {"gpu": "a100"}

    # A matching node enrols: the job is placed there.
    _enrol("gpu", slots=2, labels={"gpu": "a100"})
    assert job_place(job_id=job.id)
    job.refresh_from_db()
    assert job.status == "scheduling" and _nodes_of(job) == {"gpu"}


def test_matching_nodes_too_small_in_all_are_reported_as_such(user):
    _enrol("gpu", slots=1, labels={"gpu": "a100"})
    _enrol("plain", slots=8)
    job = _job(user, selector={"gpu": "a100"}, initial=2, low=2)
    assert not job_place(job_id=job.id)
    job.refresh_from_db()
    assert (
        "have 1 slot(s) in all, fewer than the 2 worker(s) the job starts with at least"
        in job.status_reason
    )
    # An elastic job whose minimum fits starts there with what fits.
    small = _job(user, selector={"gpu": "a100"}, initial=2, low=1)
    assert job_place(job_id=small.id)
    assert _nodes_of(small) == {"gpu"} and Job.objects.get(id=small.id).workers_current == 1


def test_a_job_whose_matching_nodes_are_busy_or_offline_waits_for_them(user):
    gpu = _enrol("gpu", slots=2, labels={"gpu": "a100"})
    _enrol("plain", slots=8)
    first = _job(user, selector={"gpu": "a100"})
    assert job_place(job_id=first.id)
    second = _job(user, selector={"gpu": "a100"})
    assert not job_place(job_id=second.id)
    second.refresh_from_db()
    assert second.status == "pending"
    assert second.status_reason == (
        "needs 1 free slot(s) (it starts with up to 2 worker(s), at least 1); "
        "0 free on 1 online node(s) matching node_selector gpu=a100"
    )

    job_cancel(job=first, actor="user:alice")
    Worker.objects.filter(job=first).update(state=Worker.State.EXITED)
    Node.objects.filter(id=gpu.id).update(status=Node.Status.OFFLINE)
    assert not job_place(job_id=second.id)
    assert not job_place(job_id=second.id)  # the sweep again: the same reason, no new event
    second.refresh_from_db()
    assert second.status_reason == (
        "needs 1 free slot(s) (it starts with up to 2 worker(s), at least 1); "
        "0 free on 0 online node(s) matching node_selector gpu=a100 "
        "(1 more offline, lost or draining)"
    )
    assert Event.objects.filter(job=second, message__startswith="pending:").count() == 2
    Node.objects.filter(id=gpu.id).update(status=Node.Status.ONLINE)
    assert job_place(job_id=second.id) and _nodes_of(second) == {"gpu"}


def test_a_job_without_a_selector_says_what_it_needs_and_what_is_free(user):
    job = _job(user, selector={})
    assert not job_place(job_id=job.id)
    job.refresh_from_db()
    assert job.status_reason.startswith("no node is enrolled")
    _enrol("small", slots=1)
    rigid = _job(user, selector={}, initial=4, low=4)
    _enrol("other", slots=4)
    busy = _job(user, selector={}, initial=4, low=4)
    assert job_place(job_id=busy.id)
    assert not job_place(job_id=rigid.id)
    rigid.refresh_from_db()
    assert rigid.status_reason == "needs 4 free slot(s); 1 free on 2 online node(s)"
    assert Event.objects.filter(job=rigid, message__startswith="pending: needs 4").count() == 1


# --- growing -------------------------------------------------------------------------------


def test_a_grow_starts_joiners_only_on_matching_nodes(api, user):
    _enrol("plain", slots=8)
    _enrol("gpu-a", slots=2, labels={"gpu": "a100"})
    _enrol("gpu-b", slots=1, labels={"gpu": "a100"})
    job = _job(user, selector={"gpu": "a100"}, initial=2, high=3)
    assert job_place(job_id=job.id)
    job = _run(job)
    assert _nodes_of(job) == {"gpu-a"}
    response = api.post(
        f"/api/v1/jobs/{job.id}/commands/", {"action": "scale_workers", "value": 3}, format="json"
    )
    assert response.status_code == 201, response.json()
    joiner = Worker.objects.select_related("node").get(job=job, state="joining")
    assert joiner.node.name == "gpu-b"


def test_a_grow_beyond_the_matching_free_slots_is_a_409_that_names_the_selector(api, user):
    _enrol("plain", slots=8)
    _enrol("gpu", slots=2, labels={"gpu": "a100"})
    job = _job(user, selector={"gpu": "a100"}, initial=2, high=4)
    assert job_place(job_id=job.id)
    job = _run(job)
    response = api.post(
        f"/api/v1/jobs/{job.id}/commands/", {"action": "scale_workers", "value": 3}, format="json"
    )
    assert response.status_code == 409, response.json()
    body = response.json()
    assert (
        "0 free on online nodes (not draining) matching the job's node_selector gpu=a100"
        in body["message"]
    )
    assert body["details"]["node_selector"] == {"gpu": "a100"}
    assert Job.objects.get(id=job.id).status == "running"
