"""Managing many jobs: labels (set at creation, edited, searched), archive (hidden from the
default list) and delete (with its metrics and logs, audited, refused while it runs)."""

import pytest
from django.utils import timezone

from controlplane.jobs.models import Event, Job, JobDeletion
from controlplane.logs.models import LogLine
from controlplane.metrics.models import MetricPoint
from tests.controlplane.metric_points import run_of

pytestmark = pytest.mark.django_db

SPEC = {
    "entrypoint": "examples.digits",
    "hyperparameters": {"batch_size": 32, "lr": 0.05},
    "workers": {"initial": 1},
}


def make(client, name: str, **extra) -> int:
    response = client.post("/api/v1/jobs/", {"name": name, **SPEC, **extra}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def names(client, query: str) -> list[str]:
    response = client.get(f"/api/v1/jobs/{query}")
    assert response.status_code == 200, response.json()
    return [j["name"] for j in response.json()["results"]]


def end(job_id: int, status: str = "cancelled") -> None:
    Job.objects.filter(id=job_id).update(status=status, finished_at=timezone.now())


def test_labels_are_set_at_creation_edited_later_and_searched_by_the_list(api):
    a = make(api, "resnet a", labels={"team": "vision", "sweep": "lr"})
    make(api, "bert", labels={"team": "nlp"})
    make(api, "plain")
    assert api.get(f"/api/v1/jobs/{a}/").json()["labels"] == {"team": "vision", "sweep": "lr"}
    assert names(api, "?q=vision") == ["resnet a"]
    assert names(api, "?q=team=nlp") == ["bert"]
    assert sorted(names(api, "?q=team")) == ["bert", "resnet a"]

    response = api.patch(f"/api/v1/jobs/{a}/", {"labels": {"team": "nlp"}}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["labels"] == {"team": "nlp"}
    assert sorted(names(api, "?q=team=nlp")) == ["bert", "resnet a"]
    assert Event.objects.filter(job_id=a, message="labels set: team=nlp").exists()


def test_bad_labels_are_a_400_that_says_what_to_fix(api):
    response = api.post("/api/v1/jobs/", {"name": "x", **SPEC, "labels": ["a"]}, format="json")
    assert response.status_code == 400
    assert "labels must be an object of label → value strings" in response.json()["message"]
    response = api.post(
        "/api/v1/jobs/", {"name": "x", **SPEC, "labels": {"team": 3}}, format="json"
    )
    assert response.status_code == 400
    assert "The value of label 'team' must be a string" in response.json()["message"]
    job = make(api, "y")
    response = api.patch(f"/api/v1/jobs/{job}/", {"labels": {"": "v"}}, format="json")
    assert response.status_code == 400
    assert "Label name ''" in response.json()["message"]


def test_archive_hides_an_ended_job_from_the_default_list_and_a_filter_shows_it(api):
    kept, archived = make(api, "kept"), make(api, "old")
    end(archived)
    response = api.post(f"/api/v1/jobs/{archived}/archive/")
    assert response.status_code == 200, response.json()
    assert response.json()["archived_at"] is not None
    assert names(api, "") == ["kept"]
    assert names(api, "?archived=true") == ["old"]
    assert names(api, "?archived=any") == ["old", "kept"]
    bad = api.get("/api/v1/jobs/?archived=maybe")
    assert bad.status_code == 400
    assert "use false (the default), true or any" in bad.json()["message"]

    # Brought back, it is listed again; both are in its audit trail.
    assert api.delete(f"/api/v1/jobs/{archived}/archive/").status_code == 200
    assert names(api, "") == ["old", "kept"]
    assert list(
        Event.objects.filter(job_id=archived, message__in=["archived", "unarchived"])
        .order_by("id")
        .values_list("message", flat=True)
    ) == ["archived", "unarchived"]
    assert kept


def test_a_job_that_has_not_ended_is_neither_archived_nor_deleted(api):
    job = make(api, "busy")
    Job.objects.filter(id=job).update(status="running")
    for response in (api.post(f"/api/v1/jobs/{job}/archive/"), api.delete(f"/api/v1/jobs/{job}/")):
        assert response.status_code == 409, response.json()
        body = response.json()
        assert f"Job {job} is running: only an ended job can be" in body["message"]
        assert f"POST /api/v1/jobs/{job}/cancel/" in body["message"]
    assert Job.objects.filter(id=job, archived_at__isnull=True).exists()


def test_delete_removes_the_job_with_its_metrics_and_logs_and_leaves_an_audit_record(
    api, other_api
):
    job_id = make(api, "to delete")
    other = make(api, "stays")
    job = Job.objects.get(id=job_id)
    run = run_of(job)
    now = timezone.now()
    MetricPoint.objects.bulk_create(
        MetricPoint(job=job, run=run, name="loss", step=s, value=1.0, time=now) for s in range(5)
    )
    LogLine.objects.bulk_create(
        LogLine(run=run, seq=s, rank=0, stream="stdout", time=now, text=f"line {s}")
        for s in range(1, 4)
    )
    end(job_id, "succeeded")

    # Someone else's job answers like a missing one.
    assert other_api.delete(f"/api/v1/jobs/{job_id}/").status_code == 404

    response = api.delete(f"/api/v1/jobs/{job_id}/")
    assert response.status_code == 200, response.json()
    assert response.json() == {
        "deleted": job_id,
        "removed": {"runs": 1, "events": 1, "metric_points": 5, "log_lines": 3},
    }
    assert not Job.objects.filter(id=job_id).exists()
    assert not MetricPoint.objects.filter(job_id=job_id).exists()
    assert not LogLine.objects.filter(run_id=run.id).exists()
    assert api.get(f"/api/v1/jobs/{job_id}/").status_code == 404
    record = JobDeletion.objects.get(job_id=job_id)
    assert (record.name, record.owner, record.status) == ("to delete", "alice", "succeeded")
    assert record.deleted_by == "user:alice"
    assert Job.objects.filter(id=other).exists()
