"""Workers, cluster versions and commands always belong to a run; worker numbers,
cluster versions and idempotency keys are unique within a run (a restart starts them
again)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0008_runs_for_placed_jobs"),
    ]

    operations = [
        migrations.AlterField(
            model_name="worker",
            name="run",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="workers", to="jobs.run"
            ),
        ),
        migrations.AlterField(
            model_name="clusterversion",
            name="run",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="cluster_versions",
                to="jobs.run",
            ),
        ),
        migrations.AlterField(
            model_name="command",
            name="run",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="commands", to="jobs.run"
            ),
        ),
        migrations.RemoveConstraint(model_name="worker", name="worker_unique_rank"),
        migrations.AddConstraint(
            model_name="worker",
            constraint=models.UniqueConstraint(
                fields=("run", "rank"), name="worker_unique_rank_in_run"
            ),
        ),
        migrations.RemoveConstraint(model_name="clusterversion", name="cluster_version_unique"),
        migrations.AddConstraint(
            model_name="clusterversion",
            constraint=models.UniqueConstraint(
                fields=("run", "version"), name="cluster_version_unique_in_run"
            ),
        ),
        migrations.RemoveConstraint(model_name="command", name="command_unique_idempotency_key"),
        migrations.AddConstraint(
            model_name="command",
            constraint=models.UniqueConstraint(
                condition=models.Q(("idempotency_key__isnull", False)),
                fields=("run", "idempotency_key"),
                name="command_unique_idempotency_key_in_run",
            ),
        ),
        migrations.AlterModelOptions(
            name="worker", options={"ordering": ["job_id", "run_id", "rank"]}
        ),
        migrations.AlterModelOptions(
            name="clusterversion", options={"ordering": ["job_id", "run_id", "version"]}
        ),
    ]
