"""ApiToken moves to the accounts app (accounts/0001 takes it up). Only Django's record
of the model changes; the table ``jobs_apitoken`` and its rows stay as they are."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0011_events_per_run"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="ApiToken")],
            database_operations=[],
        ),
    ]
