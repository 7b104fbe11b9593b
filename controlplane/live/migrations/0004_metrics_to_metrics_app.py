"""MetricPoint and MetricBatch move to the metrics app (metrics/0001 takes them up). Only
Django's record of the models changes; the tables ``live_metricpoint`` and
``live_metricbatch`` and their rows stay as they are."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("live", "0003_metric_points_run_required"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="MetricPoint"),
                migrations.DeleteModel(name="MetricBatch"),
            ],
            database_operations=[],
        ),
    ]
