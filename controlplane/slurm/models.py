"""Slurm allocations of agents: batch jobs the control plane submitted, each running one
agent per allocated node (docs/slurm.md)."""

from django.conf import settings
from django.db import models


class Allocation(models.Model):
    class Status(models.TextChoices):
        SUBMITTING = "submitting"  # the row exists; sbatch has not answered yet
        PENDING = "pending"  # queued by Slurm
        RUNNING = "running"  # Slurm started it: its agents enrol
        ENDING = "ending"  # cancelled (adaptrain slurm down) or completing
        ENDED = "ended"  # gone from Slurm's queue
        FAILED = "failed"  # sbatch refused it

    nodes = models.PositiveIntegerField()
    partition = models.CharField(max_length=100, blank=True)
    gres = models.CharField(max_length=100, blank=True)
    time_limit = models.CharField(max_length=32, blank=True)
    slurm_job_id = models.CharField(max_length=32, blank=True, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SUBMITTING)
    status_reason = models.TextField(blank=True)
    join_token = models.ForeignKey(
        "jobs.JoinToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # Requested by the autoscaler (SLURM_AUTOSCALE) for these jobs, rather than by a person.
    autoscale = models.BooleanField(default=False)
    requested_for = models.JSONField(default=list, blank=True)
    # The last autoscale round that found a worker on its nodes (idle time counts from it).
    busy_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    ACTIVE = (Status.SUBMITTING, Status.PENDING, Status.RUNNING, Status.ENDING)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"allocation {self.id} (Slurm job {self.slurm_job_id or '-'})"
