"""Decisions belong to the run they were made in: add the link, give existing decisions
to their job's current run (or its latest run; none when the job never ran), and key the
rule-history index by run."""

import django.db.models.deletion
from django.db import migrations, models


def forwards(apps, schema_editor):
    Decision = apps.get_model("policies", "Decision")
    table = Decision._meta.db_table
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS d SET run_id = j.current_run_id FROM jobs_job AS j "
            f"WHERE d.job_id = j.id AND d.run_id IS NULL AND j.current_run_id IS NOT NULL"
        )
        cursor.execute(
            f"UPDATE {table} AS d SET run_id = r.id FROM ("
            f"  SELECT DISTINCT ON (job_id) job_id, id FROM jobs_run ORDER BY job_id, number DESC"
            f") AS r WHERE d.job_id = r.job_id AND d.run_id IS NULL"
        )


def backwards(apps, schema_editor):
    pass  # dropping the column (reversing the AddField) is all there is to undo


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0009_runs_required"),
        ("policies", "0003_policy_enabled"),
    ]

    operations = [
        migrations.AddField(
            model_name="decision",
            name="run",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="decisions",
                to="jobs.run",
            ),
        ),
        migrations.RemoveIndex(model_name="decision", name="policies_de_job_id_cd7573_idx"),
        migrations.AddIndex(
            model_name="decision",
            index=models.Index(
                fields=["run", "rule", "-id"], name="policies_decision_run_rule_idx"
            ),
        ),
        # Last: PostgreSQL refuses index changes on a table with the deferred foreign-key
        # checks of these updates pending in the same transaction.
        migrations.RunPython(forwards, backwards),
    ]
