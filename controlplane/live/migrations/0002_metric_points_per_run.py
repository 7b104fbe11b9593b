"""Metric points belong to a run. This step adds the link and gives existing points to
their job's current run (or, for a job without one, its latest run; a job with points but
no run at all gets run 1, as jobs/0008 makes for placed jobs); 0003 makes the link
required (a separate migration: PostgreSQL refuses to alter a table with the deferred
foreign-key checks of these updates still pending in the same transaction)."""

import django.db.models.deletion
from django.db import migrations, models


def forwards(apps, schema_editor):
    Job = apps.get_model("jobs", "Job")
    Run = apps.get_model("jobs", "Run")
    MetricPoint = apps.get_model("live", "MetricPoint")
    table = MetricPoint._meta.db_table
    # Jobs whose points have no run to go to (not expected: points need workers, and
    # workers have runs since jobs/0008; but never lose recorded data).
    orphans = (
        Job.objects.filter(current_run__isnull=True, runs__isnull=True)
        .filter(id__in=MetricPoint.objects.values("job_id"))
        .order_by("id")
    )
    for job in orphans:
        run = Run.objects.create(
            job_id=job.id,
            number=1,
            status=job.status,
            status_reason=job.status_reason,
            created_by="scheduler",
            reason="metrics recorded before runs were tracked",
            resume_note="unknown (recorded before runs were tracked)",
            last_step=job.last_step,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )
        Job.objects.filter(id=job.id).update(current_run=run)
    # One statement per case, in the database: metric tables are large.
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS p SET run_id = j.current_run_id FROM jobs_job AS j "
            f"WHERE p.job_id = j.id AND p.run_id IS NULL AND j.current_run_id IS NOT NULL"
        )
        cursor.execute(
            f"UPDATE {table} AS p SET run_id = r.id FROM ("
            f"  SELECT DISTINCT ON (job_id) job_id, id FROM jobs_run ORDER BY job_id, number DESC"
            f") AS r WHERE p.job_id = r.job_id AND p.run_id IS NULL"
        )


def backwards(apps, schema_editor):
    pass  # dropping the column (reversing the AddField) is all there is to undo


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0009_runs_required"),
        ("live", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="metricpoint",
            name="run",
            field=models.ForeignKey(
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="metric_points",
                to="jobs.run",
            ),
        ),
        migrations.RunPython(forwards, backwards),
    ]
