"""Every join token expires (0014 gave the older ones an expiry); ``revoked`` gave way to
``revoked_at``."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs", "0014_join_tokens_limited")]

    operations = [
        migrations.RemoveField(model_name="jointoken", name="revoked"),
        migrations.AlterField(
            model_name="jointoken", name="expires_at", field=models.DateTimeField()
        ),
    ]
