"""Adaptation policies (rules over live metrics) and the decisions they made."""

from django.conf import settings
from django.db import models


class Policy(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="policies"
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    definition = models.JSONField(help_text="The policy document: name, rules, dry_run, ...")
    version = models.PositiveIntegerField(default=1)
    enabled = models.BooleanField(default=True, help_text="A disabled policy is not evaluated.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "policies"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class PolicyVersion(models.Model):
    """Every saved definition of a policy; a PUT adds one, none is ever changed."""

    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    definition = models.JSONField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "version"], name="policy_version_unique")
        ]


class Decision(models.Model):
    """A rule that fired on a job: its inputs, the action it chose and what became of it."""

    class Outcome(models.TextChoices):
        COMMANDED = "commanded"
        DRY_RUN = "dry_run"
        SKIPPED = "skipped"
        PENDING_APPROVAL = "pending_approval"
        APPROVED = "approved"
        REJECTED = "rejected"

    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="decisions")
    # The run the decision was made in (the job's current run then). A rule's history
    # (last firing, cooldown, last_fire) is per run: a restart starts it afresh. Null
    # only for a decision recorded with no run.
    run = models.ForeignKey(
        "jobs.Run",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="decisions",
        db_index=False,
    )  # the index below leads with it
    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="decisions")
    policy_version = models.PositiveIntegerField()
    rule = models.CharField(max_length=200)
    step = models.BigIntegerField()
    inputs = models.JSONField(default=dict)
    action = models.JSONField(default=dict)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    command = models.ForeignKey("jobs.Command", null=True, blank=True, on_delete=models.SET_NULL)
    decided_by = models.CharField(
        max_length=200, blank=True, help_text="who approved or rejected it"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["run", "rule", "-id"], name="policies_decision_run_rule_idx")
        ]
