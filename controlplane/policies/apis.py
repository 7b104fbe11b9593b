"""REST endpoints for adaptation policies (first cut: list, create, validate)."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.errors import NotFound
from controlplane.jobs import selectors as job_selectors
from controlplane.policies import services
from controlplane.policies.models import Policy
from controlplane.policies.templates import TEMPLATES
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


class PolicyTemplateListApi(APIView):
    @extend_schema(responses={200: inline_serializer("PolicyTemplate", {
        "id": serializers.CharField(), "name": serializers.CharField(),
        "description": serializers.CharField(), "definition": serializers.JSONField()}, many=True)})
    def get(self, request):
        return Response([{"id": t["id"], "name": t["name"], "description": t["description"],
                          "definition": {k: v for k, v in t.items() if k != "id"}} for t in TEMPLATES])


class PolicyReplayApi(APIView):
    class InputSerializer(serializers.Serializer):
        job = serializers.IntegerField(min_value=1)

    @extend_schema(request=InputSerializer, responses={200: inline_serializer("PolicyReplay", {
        "policy": serializers.IntegerField(), "version": serializers.IntegerField(),
        "job": serializers.IntegerField(), "ticks": serializers.IntegerField(),
        "evaluations": serializers.IntegerField(), "decisions": serializers.JSONField()}), **ERRORS})
    def post(self, request, policy_id: int):
        qs = Policy.objects.all() if request.user.is_staff else Policy.objects.filter(owner=request.user)
        policy = qs.filter(id=policy_id).first()
        if policy is None:
            raise NotFound(f"Policy {policy_id} does not exist or is not yours.")
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = job_selectors.job_get_for_user(user=request.user, job_id=data.validated_data["job"])
        return Response(services.policy_replay(policy=policy, job=job))
