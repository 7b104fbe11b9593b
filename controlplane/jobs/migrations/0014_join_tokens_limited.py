"""Join tokens made before use limits could enrol any number of nodes, for ever unless
they expired: each now has one use left and, when it had no expiry, expires 24 hours
after this migration. A revoked token keeps its revocation (dated now)."""

from datetime import timedelta

from django.db import migrations
from django.utils import timezone

GRACE = timedelta(hours=24)


def limit_tokens(apps, schema_editor):
    JoinToken = apps.get_model("jobs", "JoinToken")
    now = timezone.now()
    JoinToken.objects.filter(revoked=True).update(revoked_at=now)
    JoinToken.objects.filter(expires_at__isnull=True).update(expires_at=now + GRACE)
    JoinToken.objects.update(uses_allowed=1, uses_left=1)


def unlimit_tokens(apps, schema_editor):
    JoinToken = apps.get_model("jobs", "JoinToken")
    JoinToken.objects.filter(revoked_at__isnull=False).update(revoked=True)


class Migration(migrations.Migration):
    dependencies = [("jobs", "0013_node_lifecycle_and_join_token_limits")]

    operations = [migrations.RunPython(limit_tokens, unlimit_tokens)]
