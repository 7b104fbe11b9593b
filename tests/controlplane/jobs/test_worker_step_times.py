"""Each worker's own latest step and compute times in the job's workers (to spot a
straggler), in the detail and in the list."""

import pytest
from django.utils import timezone

from controlplane.jobs.models import Job, Node, Worker
from controlplane.metrics.models import MetricPoint
from tests.controlplane.metric_points import run_of

pytestmark = pytest.mark.django_db


def test_workers_carry_their_latest_step_and_compute_times(api):
    response = api.post(
        "/api/v1/jobs/",
        {
            "name": "straggler",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 32, "lr": 0.05},
            "workers": {"initial": 2},
        },
        format="json",
    )
    job = Job.objects.get(id=response.json()["id"])
    run = run_of(job)
    node = Node.objects.create(name="n1", address="h1", slots=2, credential_hash="x" * 64)
    for rank in (0, 1):
        Worker.objects.create(job=job, run=run, node=node, rank=rank, state="running")
    now = timezone.now()
    points = [
        # (rank, name, step, value): rank 1 computes three times as long at step 20.
        (0, "step_time", 10, 0.5),
        (0, "step_time", 20, 0.3),
        (0, "compute_time", 20, 0.1),
        (1, "step_time", 20, 0.3),
        (1, "compute_time", 10, 0.2),
        (1, "compute_time", 20, 0.28),
        (None, "step_time", 20, 9.0),  # the whole job's: not a worker's
    ]
    MetricPoint.objects.bulk_create(
        MetricPoint(job=job, run=run, rank=r, name=n, step=s, value=v, time=now)
        for r, n, s, v in points
    )
    detail = api.get(f"/api/v1/jobs/{job.id}/").json()
    timing = {w["rank"]: (w["step_time"], w["compute_time"]) for w in detail["workers"]}
    assert timing == {0: (0.3, 0.1), 1: (0.3, 0.28)}
    listed = api.get("/api/v1/jobs/").json()["results"][0]
    assert {w["rank"]: w["compute_time"] for w in listed["workers"]} == {0: 0.1, 1: 0.28}
