"""REST for code bundles: upload (``POST /api/v1/bundles/``, the archive as the body or as
the multipart field ``bundle``) and look one up by digest (``GET /api/v1/bundles/{digest}/``,
how ``adaptrain run`` skips an upload the control plane already has)."""

from __future__ import annotations

import re

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api import ERRORS, UPLOAD_ERRORS
from controlplane.bundles import selectors, services
from controlplane.bundles.models import Bundle
from controlplane.errors import InvalidInput, PayloadTooLarge

DIGEST = re.compile(r"^[0-9a-f]{64}$")


def check_digest_form(digest: str) -> str:
    if not DIGEST.match(digest or ""):
        raise InvalidInput(
            f"A bundle digest is 64 lowercase hex digits (sha256); got {digest!r}.",
            details={"bundle": digest},
        )
    return digest


class ArchiveParser(BaseParser):
    """The request body is the archive itself (what ``adaptrain run`` sends)."""

    media_type = "application/gzip"

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.BUNDLE_MAX_BYTES
        data = stream.read(limit + 1) if stream is not None else b""
        if len(data) > limit:
            raise PayloadTooLarge(
                f"The bundle is over the {limit}-byte limit (BUNDLE_MAX_BYTES).",
                details={"limit": limit},
            )
        return data


class OctetStreamArchiveParser(ArchiveParser):
    media_type = "application/octet-stream"


class BundleOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Bundle
        fields = ["digest", "size", "unpacked_size", "files", "created_at"]


class BundleUploadApi(APIView):
    parser_classes = [ArchiveParser, OctetStreamArchiveParser, MultiPartParser]

    @extend_schema(
        request={
            "application/gzip": OpenApiTypes.BINARY,
            "multipart/form-data": {
                "type": "object",
                "properties": {"bundle": {"type": "string", "format": "binary"}},
            },
        },
        parameters=[
            OpenApiParameter(
                "digest", str, description="the archive's sha256, checked against the upload"
            )
        ],
        responses={
            201: BundleOutputSerializer,
            200: BundleOutputSerializer,
            **UPLOAD_ERRORS,
        },
        summary="Upload a code bundle (a gzip'd tar); 200 when that content is stored already",
    )
    def post(self, request):
        if isinstance(request.data, bytes):
            data = request.data
        else:
            upload = request.data.get("bundle")
            if upload is None or isinstance(upload, str):
                raise InvalidInput(
                    "Send the archive as the body (Content-Type: application/gzip) or as the "
                    "multipart file field 'bundle'.",
                    details={"bundle": "missing"},
                )
            if upload.size > settings.BUNDLE_MAX_BYTES:
                raise PayloadTooLarge(
                    f"The bundle is {upload.size} bytes, over the "
                    f"{settings.BUNDLE_MAX_BYTES}-byte limit (BUNDLE_MAX_BYTES).",
                    details={"size": upload.size, "limit": settings.BUNDLE_MAX_BYTES},
                )
            data = upload.read()
        digest = request.query_params.get("digest")
        bundle, created = services.bundle_store(
            user=request.user,
            data=data,
            digest=check_digest_form(digest) if digest else None,
        )
        return Response(
            BundleOutputSerializer(bundle).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class BundleDetailApi(APIView):
    @extend_schema(responses={200: BundleOutputSerializer, **ERRORS})
    def get(self, request, digest: str):
        services.bundle_check_permission(request.user)
        return Response(
            BundleOutputSerializer(selectors.bundle_get(check_digest_form(digest))).data
        )
