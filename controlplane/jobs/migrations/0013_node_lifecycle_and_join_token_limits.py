"""Nodes can be drained, revoked, found incompatible and deleted (a deleted node keeps
its row and frees its name); they record the agent's version and protocol and the join
token they enrolled with. Join tokens get a use limit, a prefix and a revocation time
(0014 fills them in for the tokens made before, 0015 makes the expiry required)."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0012_api_tokens_to_accounts"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="jointoken",
            options={"ordering": ["-id"]},
        ),
        migrations.AddField(
            model_name="jointoken",
            name="prefix",
            field=models.CharField(blank=True, max_length=12),
        ),
        migrations.AddField(
            model_name="jointoken",
            name="revoked_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="jointoken",
            name="uses_allowed",
            field=models.PositiveIntegerField(default=1),
        ),
        migrations.AddField(
            model_name="jointoken",
            name="uses_left",
            field=models.PositiveIntegerField(default=1),
        ),
        migrations.AddField(
            model_name="node",
            name="agent_version",
            field=models.CharField(blank=True, max_length=50),
        ),
        migrations.AddField(
            model_name="node",
            name="deleted_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="node",
            name="draining",
            field=models.BooleanField(default=False),
        ),
        migrations.AddField(
            model_name="node",
            name="join_token",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="nodes",
                to="jobs.jointoken",
            ),
        ),
        migrations.AddField(
            model_name="node",
            name="protocol",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="node",
            name="status_reason",
            field=models.TextField(blank=True),
        ),
        migrations.AlterField(
            model_name="node",
            name="name",
            field=models.CharField(max_length=100),
        ),
        migrations.AlterField(
            model_name="node",
            name="status",
            field=models.CharField(
                choices=[
                    ("online", "Online"),
                    ("offline", "Offline"),
                    ("lost", "Lost"),
                    ("revoked", "Revoked"),
                    ("incompatible", "Incompatible"),
                ],
                default="offline",
                max_length=16,
            ),
        ),
        migrations.AddConstraint(
            model_name="jointoken",
            constraint=models.CheckConstraint(
                condition=models.Q(("uses_left__lte", models.F("uses_allowed"))),
                name="join_token_uses_left_within_allowed",
            ),
        ),
        migrations.AddConstraint(
            model_name="node",
            constraint=models.UniqueConstraint(
                condition=models.Q(("deleted_at__isnull", True)),
                fields=("name",),
                name="node_unique_name_enrolled",
            ),
        ),
    ]
