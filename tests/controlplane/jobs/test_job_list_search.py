"""The jobs list's search, filters, sorting and pagination links."""

from urllib.parse import parse_qs, urlparse

import pytest

from controlplane.jobs.models import Job, Node, Run, Worker

pytestmark = pytest.mark.django_db

SPEC = {
    "entrypoint": "examples.digits",
    "hyperparameters": {"batch_size": 32, "lr": 0.05},
    "workers": {"initial": 1},
}


def make(client, name: str) -> int:
    response = client.post("/api/v1/jobs/", {"name": name, **SPEC}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def names(client, query: str) -> list[str]:
    response = client.get(f"/api/v1/jobs/{query}")
    assert response.status_code == 200, response.json()
    return [j["name"] for j in response.json()["results"]]


def test_search_matches_the_name_in_any_case(api):
    for name in ("ResNet sweep", "bert-base", "resnet big"):
        make(api, name)
    assert names(api, "?q=resnet") == ["resnet big", "ResNet sweep"]
    assert names(api, "?q=nothing") == []


def test_ordering_sorts_by_each_key_and_an_unknown_key_is_a_clear_400(api):
    a, b, c = make(api, "b"), make(api, "c"), make(api, "a")
    Job.objects.filter(id=a).update(last_step=50, status="running")
    Job.objects.filter(id=c).update(last_step=10, status="failed")
    assert names(api, "?ordering=name") == ["a", "b", "c"]
    assert names(api, "?ordering=-name") == ["c", "b", "a"]
    assert names(api, "?ordering=created") == ["b", "c", "a"]
    assert names(api, "") == ["a", "c", "b"]
    assert names(api, "?ordering=-step") == ["b", "a", "c"]
    assert names(api, "?ordering=status") == ["a", "c", "b"]
    assert b
    response = api.get("/api/v1/jobs/?ordering=size")
    assert response.status_code == 400
    assert "Unknown ordering 'size'" in response.json()["message"]
    assert response.json()["details"] == {"ordering": "size"}


def test_owner_filter_is_for_staff_and_a_user_sees_only_their_own(api, other_api, staff_api):
    make(api, "alice's")
    make(other_api, "bob's")
    assert names(staff_api, "?owner=bob") == ["bob's"]
    assert sorted(names(staff_api, "")) == ["alice's", "bob's"]
    assert names(api, "?owner=bob") == []


def test_node_filter_lists_jobs_with_workers_on_that_node(api):
    on_gpu1, elsewhere, _unplaced = make(api, "one"), make(api, "two"), make(api, "three")
    gpu1 = Node.objects.create(name="gpu1", address="h1", slots=2, credential_hash="x" * 64)
    gpu2 = Node.objects.create(name="gpu2", address="h2", slots=2, credential_hash="y" * 64)
    for job_id, node in ((on_gpu1, gpu1), (elsewhere, gpu2)):
        run = Run.objects.create(job_id=job_id, number=1, created_by="scheduler")
        Worker.objects.create(job_id=job_id, run=run, node=node, rank=0)
    assert names(api, "?node=gpu1") == ["one"]
    assert names(api, "?node=gpu9") == []


def test_next_and_previous_links_keep_the_filters(api):
    for i in range(5):
        make(api, f"run {i}")
    make(api, "other")
    first = api.get("/api/v1/jobs/?q=run&ordering=name&limit=2").json()
    assert first["count"] == 5
    assert [j["name"] for j in first["results"]] == ["run 0", "run 1"]
    query = parse_qs(urlparse(first["next"]).query)
    assert query == {"q": ["run"], "ordering": ["name"], "limit": ["2"], "offset": ["2"]}
    second = api.get(first["next"]).json()
    assert [j["name"] for j in second["results"]] == ["run 2", "run 3"]
    assert parse_qs(urlparse(second["previous"]).query)["q"] == ["run"]


def test_the_page_draws_the_first_rows_only_when_the_url_has_no_filter(api, user, client):
    """A filtered URL is drawn by jobs.js from the API: the server must not draw the
    unfiltered first page first (its rows would flash, then vanish)."""
    make(api, "alpha-job")
    client.force_login(user)
    plain = client.get("/").content.decode()
    assert "alpha-job" in plain and "Loading…" not in plain
    for query in ("?q=nomatch", "?status=failed", "?offset=50", "?ordering=name"):
        page = client.get(f"/{query}").content.decode()
        assert "alpha-job" not in page, query
        assert "Loading…" in page, query
