"""Users' API tokens."""

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    """A user's API token. The secret is shown once at creation; only its digest is kept."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(
        max_length=12, help_text="The first characters, to recognise the token."
    )
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # The table the jobs app created (jobs/0003); the model moved here in accounts/0001.
        db_table = "jobs_apitoken"
        ordering = ["-id"]
