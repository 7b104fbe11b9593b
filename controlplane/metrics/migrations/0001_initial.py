"""MetricPoint and MetricBatch move here from the live app (live/0004 forgets them
there). Only Django's record of the models moves: the tables keep their names
(``live_metricpoint``, ``live_metricbatch``), indexes and rows, and a fresh database
gets them from live/0001–0003 as before."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("jobs", "0011_events_per_run"),
        ("live", "0004_metrics_to_metrics_app"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="MetricBatch",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("batch_id", models.CharField(max_length=64, unique=True)),
                        ("points", models.PositiveIntegerField()),
                        ("received_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "node",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE, to="jobs.node"
                            ),
                        ),
                    ],
                    options={"db_table": "live_metricbatch"},
                ),
                migrations.CreateModel(
                    name="MetricPoint",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("name", models.CharField(max_length=64)),
                        ("rank", models.IntegerField(blank=True, null=True)),
                        ("step", models.BigIntegerField()),
                        ("value", models.FloatField()),
                        ("time", models.DateTimeField()),
                        (
                            "job",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="metric_points",
                                to="jobs.job",
                            ),
                        ),
                        (
                            "run",
                            models.ForeignKey(
                                db_index=False,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="metric_points",
                                to="jobs.run",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "live_metricpoint",
                        "indexes": [
                            models.Index(
                                fields=["run", "name", "rank", "step"],
                                name="live_metric_run_series_idx",
                            )
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
