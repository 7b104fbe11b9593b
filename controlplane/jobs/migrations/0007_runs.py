"""Runs: one attempt at executing a job. This step adds the table and nullable links from
jobs, workers, cluster versions and commands; 0008 fills them for existing jobs and
0009 makes the links required."""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0006_job_policy_version"),
    ]

    operations = [
        migrations.CreateModel(
            name="Run",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("number", models.PositiveIntegerField()),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("scheduling", "Scheduling"),
                            ("running", "Running"),
                            ("rescaling", "Rescaling"),
                            ("succeeded", "Succeeded"),
                            ("failed", "Failed"),
                            ("cancelled", "Cancelled"),
                        ],
                        default="pending",
                        max_length=16,
                    ),
                ),
                ("status_reason", models.TextField(blank=True)),
                ("created_by", models.CharField(max_length=200)),
                ("reason", models.TextField(blank=True)),
                ("resumed_from", models.CharField(blank=True, max_length=500)),
                ("resumed_from_step", models.BigIntegerField(blank=True, null=True)),
                ("resume_note", models.TextField(blank=True)),
                ("cluster_version", models.PositiveIntegerField(default=0)),
                ("workers_min_seen", models.PositiveIntegerField(blank=True, null=True)),
                ("workers_max_seen", models.PositiveIntegerField(blank=True, null=True)),
                ("last_step", models.BigIntegerField(default=0)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("started_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                (
                    "job",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="runs",
                        to="jobs.job",
                    ),
                ),
            ],
            options={
                "ordering": ["job_id", "number"],
                "constraints": [
                    models.UniqueConstraint(fields=("job", "number"), name="run_unique_number")
                ],
            },
        ),
        migrations.AddField(
            model_name="job",
            name="current_run",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="current_of",
                to="jobs.run",
            ),
        ),
        migrations.AddField(
            model_name="worker",
            name="run",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="workers",
                to="jobs.run",
            ),
        ),
        migrations.AddField(
            model_name="clusterversion",
            name="run",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="cluster_versions",
                to="jobs.run",
            ),
        ),
        migrations.AddField(
            model_name="command",
            name="run",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="commands",
                to="jobs.run",
            ),
        ),
    ]
