"""REST endpoints for a user's own API tokens: list, create (the secret shown once) and
revoke."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.accounts import selectors, services
from controlplane.api import ERRORS


class TokenOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class TokenListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        expires_in_days = serializers.IntegerField(min_value=1, max_value=3650, required=False)

    class CreatedSerializer(TokenOutputSerializer):
        token = serializers.CharField(help_text="The secret: shown only now, store it safely.")

    @extend_schema(responses={200: TokenOutputSerializer(many=True), **ERRORS})
    def get(self, request):
        return Response(TokenOutputSerializer(selectors.tokens_of(request.user), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: CreatedSerializer, **ERRORS})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token, secret = services.token_create(user=request.user, **data.validated_data)
        return Response(
            {**TokenOutputSerializer(token).data, "token": secret}, status=status.HTTP_201_CREATED
        )


class TokenDetailApi(APIView):
    @extend_schema(responses={200: TokenOutputSerializer, **ERRORS})
    def delete(self, request, token_id: int):
        token = services.token_revoke(user=request.user, token_id=token_id)
        return Response(TokenOutputSerializer(token).data)
