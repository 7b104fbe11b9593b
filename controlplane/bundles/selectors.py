"""Reads of stored bundles."""

from __future__ import annotations

from controlplane.bundles.models import Bundle
from controlplane.errors import NotFound


def bundle_get(digest: str) -> Bundle:
    bundle = Bundle.objects.filter(digest=digest).first()
    if bundle is None:
        raise NotFound(
            f"No bundle with digest {digest}; upload it first (POST /api/v1/bundles/).",
            details={"bundle": digest},
        )
    return bundle
