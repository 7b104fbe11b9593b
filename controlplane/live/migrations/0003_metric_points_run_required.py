"""Every metric point belongs to a run, and the series index leads with the run (reads
are per run); reads per job use the job foreign key's own index."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("live", "0002_metric_points_per_run"),
    ]

    operations = [
        migrations.AlterField(
            model_name="metricpoint",
            name="run",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="metric_points",
                to="jobs.run",
            ),
        ),
        migrations.RemoveIndex(model_name="metricpoint", name="live_metric_job_id_c0b098_idx"),
        migrations.AddIndex(
            model_name="metricpoint",
            index=models.Index(
                fields=["run", "name", "rank", "step"], name="live_metric_run_series_idx"
            ),
        ),
    ]
