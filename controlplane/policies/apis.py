"""REST endpoints for adaptation policies (first cut: list, create, validate)."""

from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.policies import services
from controlplane.policies.models import Policy


class PolicyOutputSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username")

    class Meta:
        model = Policy
        fields = ["id", "name", "description", "owner", "version", "definition", "created_at", "updated_at"]


class PolicyListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        definition = serializers.JSONField()

    def get(self, request):
        qs = Policy.objects.select_related("owner")
        if not request.user.is_staff:
            qs = qs.filter(owner=request.user)
        return Response(PolicyOutputSerializer(qs, many=True).data)

    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        policy = services.policy_create(owner=request.user, definition=data.validated_data["definition"])
        return Response(PolicyOutputSerializer(policy).data, status=status.HTTP_201_CREATED)


class PolicyValidateApi(APIView):
    class InputSerializer(serializers.Serializer):
        definition = serializers.JSONField()

    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        parsed = services.policy_validate(data.validated_data["definition"])
        return Response({"valid": True, "rules": [r.name for r in parsed.rules]})
