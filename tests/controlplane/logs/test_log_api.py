"""Workers' log lines: an agent's batches (POST /api/v1/agent/logs/) are checked whole,
stored once however often they are retried, numbered within their run in the order
sent; a run keeps at most LOG_MAX_BYTES_PER_RUN (its oldest lines go); retention removes
old jobs' lines. Users read one run at a time (GET /api/v1/jobs/{id}/logs/): all workers
merged or one, one stream, a page after a line number, or the last lines; a bad
parameter is a 400 that names it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.jobs.models import Job, Run
from controlplane.jobs.services.jobs import job_create
from controlplane.logs import services
from controlplane.logs.models import LogBatch, LogLine, RunLog
from controlplane.logs.tasks import apply_retention

pytestmark = pytest.mark.django_db

T0 = 1_750_000_000.0


def line(i: int, *, rank: int = 0, stream: str = "stdout", text: str | None = None) -> dict:
    return {
        "rank": rank,
        "stream": stream,
        "time": T0 + i,
        "text": f"line {i}" if text is None else text,
    }


def post(node_client, job, lines, batch_id="b-1"):
    return node_client.post(
        "/api/v1/agent/logs/", {"batch_id": batch_id, "job": job.id, "lines": lines}, format="json"
    )


def read(api, job, query=""):
    response = api.get(f"/api/v1/jobs/{job.id}/logs/{query}")
    assert response.status_code == 200, response.json()
    return response.json()


def test_a_batch_is_stored_once_numbered_in_order_even_when_retried(node_client, placed_job, api):
    lines = [line(0), line(1, rank=1, stream="stderr"), line(2)]
    first = post(node_client, placed_job, lines)
    again = post(node_client, placed_job, lines)
    assert (first.status_code, first.json()) == (201, {"stored": 3})
    assert (again.status_code, again.json()) == (200, {"stored": 0})
    second = post(node_client, placed_job, [line(3, rank=1)], batch_id="b-2")
    assert second.json() == {"stored": 1}
    body = read(api, placed_job)
    assert body["run"] == 1 and body["first_seq"] == 1 and body["last_seq"] == 4
    assert body["more"] is False and body["trimmed"] == 0
    assert body["lines"] == [
        {"seq": 1, "rank": 0, "stream": "stdout", "time": T0, "text": "line 0"},
        {"seq": 2, "rank": 1, "stream": "stderr", "time": T0 + 1, "text": "line 1"},
        {"seq": 3, "rank": 0, "stream": "stdout", "time": T0 + 2, "text": "line 2"},
        {"seq": 4, "rank": 1, "stream": "stdout", "time": T0 + 3, "text": "line 3"},
    ]


def test_any_text_is_stored_exactly(node_client, placed_job, api):
    odd = [
        'a,"quoted", comma',
        "tab\there",
        "back\\slash \\N",
        "",
        "  indented",
        "ünïcödé ✓",
        "nul\x00",
    ]
    post(node_client, placed_job, [line(i, text=t) for i, t in enumerate(odd)])
    stored = [entry["text"] for entry in read(api, placed_job)["lines"]]
    assert stored == [*odd[:-1], "nul\ufffd"]


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"stream": "stdin"}, "lines[1]: field 'stream' must be one of stdout, stderr"),
        ({"rank": -1}, "lines[1]: rank must be a non-negative integer"),
        ({"time": 1e30}, "lines[1]: time must be a unix timestamp"),
        ({"text": 5}, "lines[1]: field 'text' must be a string"),
        ({"text": "x" * 70_000}, "lines[1]: text is longer than 65536 characters"),
    ],
)
def test_a_bad_line_refuses_the_whole_batch(node_client, placed_job, bad, fragment):
    response = post(node_client, placed_job, [line(0), {**line(1), **bad}])
    assert response.status_code == 400
    assert fragment in response.json()["message"]
    assert LogLine.objects.count() == 0 and LogBatch.objects.count() == 0


def test_bad_batches_get_clear_errors(node_client, placed_job, settings):
    empty = post(node_client, placed_job, [])
    assert empty.json()["message"].startswith("lines is empty"), empty.json()
    no_id = node_client.post(
        "/api/v1/agent/logs/", {"job": placed_job.id, "lines": []}, format="json"
    )
    assert no_id.status_code == 400 and "missing field 'batch_id'" in no_id.json()["message"]
    not_object = node_client.post("/api/v1/agent/logs/", [1, 2], format="json")
    assert not_object.status_code == 400 and "must be a JSON object" in not_object.json()["message"]
    settings.LOG_BATCH_MAX_LINES = 2
    too_big = post(node_client, placed_job, [line(i) for i in range(3)])
    assert too_big.status_code == 413 and "at most 2 lines" in too_big.json()["message"]
    other = job_create(
        owner=placed_job.owner,
        name="elsewhere",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 8, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
    )
    not_here = post(node_client, other, [line(0)])
    assert not_here.status_code == 404 and "No workers of job" in not_here.json()["message"]
    assert LogLine.objects.count() == 0


def test_users_page_forward_and_read_the_last_lines(node_client, placed_job, api):
    post(
        node_client,
        placed_job,
        [line(i, rank=i % 2, stream="stderr" if i % 3 == 0 else "stdout") for i in range(10)],
    )
    page = read(api, placed_job, "?since=0&limit=4")
    assert [x["seq"] for x in page["lines"]] == [1, 2, 3, 4] and page["more"] is True
    page = read(api, placed_job, "?since=8&limit=4")
    assert [x["seq"] for x in page["lines"]] == [9, 10] and page["more"] is False
    assert [x["seq"] for x in read(api, placed_job, "?tail=3")["lines"]] == [8, 9, 10]
    worker1 = read(api, placed_job, "?worker=1")["lines"]
    assert [x["rank"] for x in worker1] == [1] * 5
    assert [x["seq"] for x in read(api, placed_job, "?worker=1&tail=2")["lines"]] == [8, 10]
    errors = read(api, placed_job, "?stream=stderr")["lines"]
    assert [x["text"] for x in errors] == ["line 0", "line 3", "line 6", "line 9"]
    assert read(api, placed_job, "?worker=7")["lines"] == []


def test_runs_are_read_apart_and_the_current_one_by_default(node_client, placed_job, api):
    post(node_client, placed_job, [line(0, text="run one")])
    run2 = Run.objects.create(job=placed_job, number=2, created_by="test")
    Run.objects.filter(id=placed_job.current_run_id).update(status="failed")
    Job.objects.filter(id=placed_job.id).update(current_run=run2)
    placed_job.workers.filter(node=node_client.node).update(run=run2)
    post(node_client, placed_job, [line(1, text="run two")], batch_id="b-2")
    current = read(api, placed_job)
    assert current["run"] == 2 and [x["text"] for x in current["lines"]] == ["run two"]
    assert current["lines"][0]["seq"] == 1  # numbered within the run
    first = read(api, placed_job, "?run=1")
    assert [x["text"] for x in first["lines"]] == ["run one"]
    missing = api.get(f"/api/v1/jobs/{placed_job.id}/logs/?run=5")
    assert missing.status_code == 404 and missing.json()["details"]["runs"] == [1, 2]


def test_a_job_never_placed_has_no_lines(api, user):
    job = job_create(
        owner=user,
        name="waiting",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 8, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
    )
    body = read(api, job)
    assert body["run"] is None and body["lines"] == [] and body["last_seq"] == 0


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("?since=-1", "since"),
        ("?since=abc", "since"),
        ("?tail=0", "tail"),
        ("?tail=10001", "tail"),
        ("?limit=0", "limit"),
        ("?worker=-1", "worker"),
        ("?worker=x", "worker"),
        ("?stream=stdin", "stream"),
        ("?run=0", "run"),
        ("?since=1&tail=5", "since"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(api, placed_job, query, parameter):
    response = api.get(f"/api/v1/jobs/{placed_job.id}/logs/{query}")
    assert response.status_code == 400
    body = response.json()
    assert (
        body["code"] == "invalid" and parameter in body["message"] and parameter in body["details"]
    )


def test_only_the_owner_and_staff_read_a_jobs_lines(
    node_client, placed_job, other_api, other_user, client
):
    post(node_client, placed_job, [line(0)])
    assert other_api.get(f"/api/v1/jobs/{placed_job.id}/logs/").status_code == 404
    assert client.get(f"/api/v1/jobs/{placed_job.id}/logs/").status_code in (401, 403)
    other_user.is_staff = True
    other_user.save()
    assert len(other_api.get(f"/api/v1/jobs/{placed_job.id}/logs/").json()["lines"]) == 1


def test_a_run_over_its_size_cap_loses_its_oldest_lines(node_client, placed_job, api, settings):
    settings.LOG_MAX_BYTES_PER_RUN = 1000
    for b in range(5):  # 5 batches of 4 lines of 100 bytes: 2000 bytes in all
        post(
            node_client,
            placed_job,
            [line(b * 4 + i, text=f"{b * 4 + i:03d}" + "x" * 97) for i in range(4)],
            batch_id=f"b-{b}",
        )
    body = read(api, placed_job, "?limit=100")
    kept = [x["seq"] for x in body["lines"]]
    assert kept[-1] == 20 and kept == list(range(kept[0], 21))
    assert sum(len(x["text"]) for x in body["lines"]) <= 1000
    assert body["first_seq"] == kept[0] and body["trimmed"] == kept[0] - 1
    assert RunLog.objects.get(run_id=placed_job.current_run_id).bytes == 100 * len(kept)


def test_retention_removes_the_lines_of_jobs_ended_long_ago(node_client, placed_job, api, settings):
    post(node_client, placed_job, [line(i) for i in range(3)])
    settings.LOG_RETENTION_DAYS = 30
    apply_retention()
    assert LogLine.objects.count() == 3  # the job still runs
    Job.objects.filter(id=placed_job.id).update(
        status="failed", finished_at=timezone.now() - timedelta(days=31)
    )
    LogBatch.objects.update(
        received_at=timezone.now() - services.BATCH_ID_TTL - timedelta(seconds=1)
    )
    apply_retention()
    assert LogLine.objects.count() == 0 and LogBatch.objects.count() == 0
    body = read(api, placed_job)
    assert body["lines"] == [] and body["last_seq"] == 3 and body["first_seq"] == 4


def test_the_endpoints_are_in_the_openapi_schema(client):
    paths = client.get("/api/schema/?format=json").json()["paths"]
    read = paths["/api/v1/jobs/{job_id}/logs/"]["get"]
    assert {p["name"] for p in read["parameters"]} >= {
        "run",
        "worker",
        "stream",
        "since",
        "tail",
        "limit",
    }
    assert "post" in paths["/api/v1/agent/logs/"]


def test_deleting_a_job_deletes_its_lines(node_client, placed_job):
    post(node_client, placed_job, [line(i) for i in range(3)])
    Job.objects.filter(id=placed_job.id).delete()
    assert LogLine.objects.count() == 0 and RunLog.objects.count() == 0
