"""The logs app's tables: log lines (primary key: run and line number), per-run counters
and the ids of ingested batches."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("jobs", "0012_api_tokens_to_accounts"),
    ]

    operations = [
        migrations.CreateModel(
            name="RunLog",
            fields=[
                (
                    "run",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="log",
                        serialize=False,
                        to="jobs.run",
                    ),
                ),
                ("last_seq", models.BigIntegerField(default=0)),
                ("bytes", models.BigIntegerField(default=0)),
                ("first_seq", models.BigIntegerField(default=1)),
                ("trimmed_lines", models.BigIntegerField(default=0)),
            ],
        ),
        migrations.CreateModel(
            name="LogBatch",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("batch_id", models.CharField(max_length=64, unique=True)),
                ("lines", models.PositiveIntegerField()),
                ("received_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                (
                    "node",
                    models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to="jobs.node"),
                ),
            ],
        ),
        migrations.CreateModel(
            name="LogLine",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "run", "seq", blank=True, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("seq", models.BigIntegerField()),
                ("rank", models.IntegerField(help_text="the worker's number in the run")),
                (
                    "stream",
                    models.CharField(
                        choices=[("stdout", "Stdout"), ("stderr", "Stderr")], max_length=6
                    ),
                ),
                ("time", models.DateTimeField(help_text="when the worker's node read it")),
                ("text", models.TextField()),
                (
                    "run",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="log_lines",
                        to="jobs.run",
                    ),
                ),
            ],
            options={
                "indexes": [
                    models.Index(fields=["run", "rank", "seq"], name="logs_line_worker_idx")
                ],
            },
        ),
    ]
