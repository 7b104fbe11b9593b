"""REST endpoints for adaptation policies (first cut: list, create, validate)."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.policies import services
from controlplane.policies.models import Policy
from controlplane.schema import ERRORS


class PolicyOutputSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username")

    class Meta:
        model = Policy
        fields = ["id", "name", "description", "owner", "version", "definition", "created_at", "updated_at"]


class PolicyListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        definition = serializers.JSONField()

    @extend_schema(responses={200: PolicyOutputSerializer(many=True), **ERRORS})
    def get(self, request):
        qs = Policy.objects.select_related("owner")
        if not request.user.is_staff:
            qs = qs.filter(owner=request.user)
        return Response(PolicyOutputSerializer(qs, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: PolicyOutputSerializer, **ERRORS})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        policy = services.policy_create(owner=request.user, definition=data.validated_data["definition"])
        return Response(PolicyOutputSerializer(policy).data, status=status.HTTP_201_CREATED)


class PolicyValidateApi(APIView):
    class InputSerializer(serializers.Serializer):
        definition = serializers.JSONField()

    @extend_schema(request=InputSerializer, responses={200: inline_serializer("PolicyValid", {
        "valid": serializers.BooleanField(), "rules": serializers.ListField(child=serializers.CharField())}),
        **ERRORS})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        parsed = services.policy_validate(data.validated_data["definition"])
        return Response({"valid": True, "rules": [r.name for r in parsed.rules]})
