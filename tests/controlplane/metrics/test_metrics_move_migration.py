"""Migrations live/0004 and metrics/0001: metric points and batches move from the live
app to metrics with their tables (live_metricpoint, live_metricbatch) and rows."""

import pytest
from django.utils import timezone

from tests.controlplane.migrations import migrate, migrate_to_latest

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("jobs", "0011_events_per_run"), ("live", "0003_metric_points_run_required")]
AFTER = [("metrics", "0001_initial")]


def test_points_and_batches_recorded_before_the_move_are_kept():
    apps = migrate(BEFORE)
    try:
        User = apps.get_model("auth", "User")
        Job, Run, Node = (apps.get_model("jobs", name) for name in ("Job", "Run", "Node"))
        MetricPoint = apps.get_model("live", "MetricPoint")
        MetricBatch = apps.get_model("live", "MetricBatch")
        owner = User.objects.create(username="old-timer")
        job = Job.objects.create(
            owner=owner,
            name="j",
            entrypoint="examples.digits",
            batch_size=32,
            learning_rate=0.1,
            hyperparameters={"batch_size": 32, "lr": 0.1},
        )
        run = Run.objects.create(job=job, number=1, created_by="scheduler")
        node = Node.objects.create(name="n1", address="h", slots=1, credential_hash="x" * 64)
        MetricBatch.objects.create(batch_id="b-1", node=node, points=3)
        MetricPoint.objects.bulk_create(
            [
                MetricPoint(job=job, run=run, name="loss", step=s, value=s, time=timezone.now())
                for s in range(3)
            ]
        )

        apps = migrate(AFTER)
        MetricPoint = apps.get_model("metrics", "MetricPoint")
        MetricBatch = apps.get_model("metrics", "MetricBatch")
        assert MetricPoint._meta.db_table == "live_metricpoint"
        assert MetricBatch._meta.db_table == "live_metricbatch"
        assert sorted(MetricPoint.objects.filter(run_id=run.id).values_list("step", flat=True)) == [
            0,
            1,
            2,
        ]
        assert MetricBatch.objects.get(batch_id="b-1").node_id == node.id
    finally:
        migrate_to_latest()
