"""A stored code bundle: its digest names its bytes in the ``bundles`` storage."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Bundle(models.Model):
    digest = models.CharField(max_length=64, unique=True, help_text="hex sha256 of the archive")
    size = models.BigIntegerField(help_text="bytes of the archive")
    unpacked_size = models.BigIntegerField(help_text="bytes of its files")
    files = models.PositiveIntegerField(help_text="number of files")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        permissions = [("submit_bundle", "Can submit code bundles (run their own code on nodes)")]

    def __str__(self) -> str:
        return f"bundle {self.digest[:12]}"

    @property
    def storage_name(self) -> str:
        return f"{self.digest[:2]}/{self.digest}.tar.gz"
