"""Workers' output lines, stored per run of a job, and the batches they arrived in.

A line is numbered within its run (``seq``): the order of the run's merged log, which
readers page through. Each run's counters — numbers given out, text stored, lines
removed by the size cap — are one :class:`RunLog` row, which an ingest locks while it
numbers its lines, so a run's lines are committed in number order (a reader paging with
``since`` never skips a line that commits late)."""

from django.db import models

from agent.protocol import vocabulary


class LogBatch(models.Model):
    """One ingested batch; its id makes a retried upload count once."""

    batch_id = models.CharField(max_length=64, unique=True)
    node = models.ForeignKey("jobs.Node", on_delete=models.CASCADE)
    lines = models.PositiveIntegerField()
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)


class RunLog(models.Model):
    run = models.OneToOneField(
        "jobs.Run", on_delete=models.CASCADE, primary_key=True, related_name="log"
    )
    last_seq = models.BigIntegerField(default=0)  # the number of the run's newest line
    bytes = models.BigIntegerField(default=0)  # UTF-8 text of the lines kept
    first_seq = models.BigIntegerField(default=1)  # the oldest line kept (older ones removed)
    trimmed_lines = models.BigIntegerField(default=0)  # removed by the size cap


class LogLine(models.Model):
    Stream = models.TextChoices("Stream", vocabulary.LOG_STREAMS.enum_members())

    pk = models.CompositePrimaryKey("run", "seq")
    run = models.ForeignKey(
        "jobs.Run", on_delete=models.CASCADE, related_name="log_lines", db_index=False
    )
    seq = models.BigIntegerField()
    rank = models.IntegerField(help_text="the worker's number in the run")
    stream = models.CharField(max_length=6, choices=Stream.choices)
    time = models.DateTimeField(help_text="when the worker's node read it")
    text = models.TextField()

    class Meta:
        # The primary key (run, seq) serves the merged log; this one a worker's own.
        indexes = [models.Index(fields=["run", "rank", "seq"], name="logs_line_worker_idx")]
