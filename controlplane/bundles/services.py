"""Storing code bundles: checked, named by their sha256, stored once.

A user needs the ``bundles.submit_bundle`` permission (staff have every permission; an
admin grants it in the admin site, ``manage.py ensure_user`` grants it to the users it
makes). An archive is refused before anything is stored when it is too big
(``BUNDLE_MAX_BYTES``), not a gzip'd tar, or holds entries that would escape the job's
directory on a node (:func:`adaptrain.bundle.inspect`, the same check the agents make
again before unpacking). A resubmission of the same content stores nothing new.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import IntegrityError, transaction

from adaptrain.bundle import BundleError, inspect
from controlplane.bundles.models import Bundle
from controlplane.errors import Forbidden, InvalidInput, PayloadTooLarge

PERMISSION = "bundles.submit_bundle"


def _storage():
    return storages["bundles"]


def bundle_check_permission(user) -> None:
    if not user.has_perm(PERMISSION):
        raise Forbidden(
            f"User {user.get_username()} may not submit code bundles: an admin can grant the "
            "'Can submit code bundles' permission (Django admin → Users → user permissions).",
            details={"permission": PERMISSION},
        )


def bundle_store(*, user, data: bytes, digest: str | None = None) -> tuple[Bundle, bool]:
    """Store ``data`` (an archive from :func:`adaptrain.bundle.pack`, or any gzip'd tar) and
    return its row and whether it was new. ``digest``, when the client gives one, must be
    the archive's sha256 (a check against a corrupted upload)."""
    bundle_check_permission(user)
    limit = settings.BUNDLE_MAX_BYTES
    if len(data) > limit:
        raise PayloadTooLarge(
            f"The bundle is {len(data)} bytes, over the {limit}-byte limit (BUNDLE_MAX_BYTES). "
            "Keep data sets and checkpoints out of the project (.adaptrainignore) and read "
            "them from storage the nodes share.",
            details={"size": len(data), "limit": limit},
        )
    actual = hashlib.sha256(data).hexdigest()
    if digest is not None and digest.lower() != actual:
        raise InvalidInput(
            f"The upload's sha256 is {actual}, not {digest}: the archive was corrupted or "
            "changed on the way; upload it again.",
            details={"digest": digest, "actual": actual},
        )
    existing = Bundle.objects.filter(digest=actual).first()
    if existing is not None and _storage().exists(existing.storage_name):
        return existing, False
    try:
        contents = inspect(data, limit_bytes=4 * limit)
    except BundleError as exc:
        raise InvalidInput(
            f"Not a usable code bundle: {exc}.", details={"bundle": str(exc)}
        ) from None
    if not contents.files:
        raise InvalidInput("The bundle holds no files.", details={"bundle": actual})
    bundle = existing or Bundle(
        digest=actual,
        size=len(data),
        unpacked_size=contents.unpacked_bytes,
        files=len(contents.files),
        created_by=user,
    )
    if not _storage().exists(bundle.storage_name):
        _storage().save(bundle.storage_name, ContentFile(data))
    if existing is not None:
        return existing, True  # the row was there, its file was lost: stored again
    try:
        with transaction.atomic():
            bundle.save()
    except IntegrityError:  # the same content uploaded at the same moment
        return Bundle.objects.get(digest=actual), False
    return bundle, True


def bundle_read(bundle: Bundle) -> bytes:
    """The archive's bytes from the bundle storage."""
    with _storage().open(bundle.storage_name, "rb") as f:
        return f.read()
