"""Migrations live 0002/0003 and policies 0004: existing metric points and decisions are
given to their job's current run (or its latest run when it has no current one); points
of a job with no run at all get a run 1 rather than be lost; decisions of a job that
never ran keep no run."""

import pytest
from django.utils import timezone

from tests.controlplane.migrations import migrate, migrate_to_latest

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [
    ("jobs", "0010_job_workers_wanted"),
    ("live", "0001_initial"),
    ("policies", "0003_policy_enabled"),
]
AFTER = [("live", "0003_metric_points_run_required"), ("policies", "0004_decisions_per_run")]


def test_existing_points_and_decisions_join_their_jobs_current_or_latest_run():
    apps = migrate(BEFORE)
    try:
        User = apps.get_model("auth", "User")
        Job, Run = apps.get_model("jobs", "Job"), apps.get_model("jobs", "Run")
        MetricPoint = apps.get_model("live", "MetricPoint")
        Policy, Decision = (
            apps.get_model("policies", "Policy"),
            apps.get_model("policies", "Decision"),
        )
        owner = User.objects.create(username="old-timer")
        common = {
            "owner": owner,
            "entrypoint": "examples.digits",
            "batch_size": 32,
            "learning_rate": 0.1,
            "hyperparameters": {"batch_size": 32, "lr": 0.1},
        }
        restarted = Job.objects.create(name="restarted", status="running", **common)
        Run.objects.create(job=restarted, number=1, status="failed", created_by="scheduler")
        run2 = Run.objects.create(
            job=restarted, number=2, status="running", created_by="user:old-timer"
        )
        Job.objects.filter(id=restarted.id).update(current_run=run2)
        unlinked = Job.objects.create(name="no current run", status="failed", **common)
        Run.objects.create(job=unlinked, number=1, status="failed", created_by="scheduler")
        latest = Run.objects.create(
            job=unlinked, number=2, status="failed", created_by="user:old-timer"
        )
        orphan = Job.objects.create(
            name="points, no run", status="succeeded", last_step=3, **common
        )
        never = Job.objects.create(name="never ran", status="cancelled", **common)
        now = timezone.now()
        for job in (restarted, unlinked, orphan):
            MetricPoint.objects.bulk_create(
                [MetricPoint(job=job, name="loss", step=s, value=1.0, time=now) for s in range(4)]
            )
        policy = Policy.objects.create(owner=owner, name="p", definition={"name": "p", "rules": []})
        decision = {
            "policy": policy,
            "policy_version": 1,
            "rule": "r",
            "step": 1,
            "outcome": "dry_run",
        }
        d_restarted = Decision.objects.create(job=restarted, **decision)
        d_unlinked = Decision.objects.create(job=unlinked, **decision)
        d_never = Decision.objects.create(job=never, **decision)

        apps = migrate(AFTER)
        Job, Run = apps.get_model("jobs", "Job"), apps.get_model("jobs", "Run")
        MetricPoint, Decision = (
            apps.get_model("live", "MetricPoint"),
            apps.get_model("policies", "Decision"),
        )

        def runs_of_points(job):
            return set(MetricPoint.objects.filter(job_id=job.id).values_list("run_id", flat=True))

        assert runs_of_points(restarted) == {run2.id}
        assert runs_of_points(unlinked) == {latest.id}
        made = Run.objects.get(job_id=orphan.id)
        assert (made.number, made.status, made.last_step) == (1, "succeeded", 3)
        assert runs_of_points(orphan) == {made.id}
        assert Job.objects.get(id=orphan.id).current_run_id == made.id
        assert MetricPoint.objects.count() == 12  # nothing lost
        assert not Run.objects.filter(job_id=never.id).exists()
        assert Decision.objects.get(id=d_restarted.id).run_id == run2.id
        assert Decision.objects.get(id=d_unlinked.id).run_id == latest.id
        assert Decision.objects.get(id=d_never.id).run_id is None
        field = MetricPoint._meta.get_field("run")
        assert not field.null
    finally:
        # Leave the schema as the other tests expect it (every app at its latest
        # migration), however this one ends.
        migrate_to_latest()
