"""Events belong to the run that was the job's current one when they happened. Existing
events go to the job's latest run created at or before the event (events from before the
job's first placement keep no run)."""

import django.db.models.deletion
from django.db import migrations, models


def forwards(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "UPDATE jobs_event AS e SET run_id = ("
            "  SELECT r.id FROM jobs_run AS r WHERE r.job_id = e.job_id AND r.created_at <= e.created_at"
            "  ORDER BY r.number DESC LIMIT 1"
            ") WHERE e.run_id IS NULL"
        )


def backwards(apps, schema_editor):
    pass  # dropping the column (reversing the AddField) is all there is to undo


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0010_job_workers_wanted"),
    ]

    operations = [
        migrations.AddField(
            model_name="event",
            name="run",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="events",
                to="jobs.run",
            ),
        ),
        migrations.RunPython(forwards, backwards),
    ]
