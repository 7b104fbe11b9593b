"""Metric points reported by training workers, and the batches they arrived in."""

from django.db import models


class MetricBatch(models.Model):
    """One ingested batch; its id makes a retried upload count once."""

    batch_id = models.CharField(max_length=64, unique=True)
    node = models.ForeignKey("jobs.Node", on_delete=models.CASCADE)
    points = models.PositiveIntegerField()
    received_at = models.DateTimeField(auto_now_add=True)


class MetricPoint(models.Model):
    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="metric_points")
    name = models.CharField(max_length=64)
    # None for a whole-job series; the worker's rank for a per-worker series.
    rank = models.IntegerField(null=True, blank=True)
    step = models.BigIntegerField()
    value = models.FloatField()
    time = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["job", "name", "rank", "step"])]
