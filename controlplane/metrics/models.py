"""Metric points reported by training workers, and the batches they arrived in.

Every point belongs to a run of its job (the attempt that reported it): a job restarted
from scratch counts its steps from 0 again, and its runs' series must not mix."""

from django.db import models


class MetricBatch(models.Model):
    """One ingested batch; its id makes a retried upload count once."""

    batch_id = models.CharField(max_length=64, unique=True)
    node = models.ForeignKey("jobs.Node", on_delete=models.CASCADE)
    points = models.PositiveIntegerField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # The table the live app created; the model moved here in metrics/0001.
        db_table = "live_metricbatch"


class MetricPoint(models.Model):
    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="metric_points")
    # No index of its own: the (run, name, rank, step) index below leads with it, and
    # every index costs ingest time (COPY of thousands of points per batch).
    run = models.ForeignKey(
        "jobs.Run", on_delete=models.CASCADE, related_name="metric_points", db_index=False
    )
    name = models.CharField(max_length=64)
    # None for a whole-job series; the worker's rank for a per-worker series.
    rank = models.IntegerField(null=True, blank=True)
    step = models.BigIntegerField()
    value = models.FloatField()
    time = models.DateTimeField()

    class Meta:
        # The table the live app created; the model moved here in metrics/0001.
        db_table = "live_metricpoint"
        # Reads are per run (charts, policies, replay); reads per job (retention, the
        # latest checkpoint) use the job foreign key's own index.
        indexes = [
            models.Index(fields=["run", "name", "rank", "step"], name="live_metric_run_series_idx")
        ]
