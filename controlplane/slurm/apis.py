"""REST endpoints for Slurm allocations of agents (staff): list, submit, show, release."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api import ERRORS, ErrorSerializer
from controlplane.errors import NotFound
from controlplane.slurm import sbatch, selectors, services
from controlplane.slurm.models import Allocation

# 409: Slurm is not enabled here (SLURM_ENABLED), or the allocation has ended already;
# 502: sbatch or scancel refused (their message is in ours).
SLURM_ERRORS = {**ERRORS, 409: ErrorSerializer, 502: ErrorSerializer}


class IsStaff(IsAdminUser):
    message = "Only staff may manage Slurm allocations."


class AllocationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    nodes = serializers.IntegerField(help_text="Nodes asked for.")
    partition = serializers.CharField()
    gres = serializers.CharField()
    time_limit = serializers.CharField()
    slurm_job_id = serializers.CharField(help_text="Slurm's job id (empty until submitted).")
    status = serializers.ChoiceField(choices=Allocation.Status.choices)
    status_reason = serializers.CharField()
    node_names = serializers.SerializerMethodField(help_text="Nodes its agents enrolled as.")
    created_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True)

    def get_node_names(self, allocation: Allocation) -> list[str]:
        return [n.name for n in selectors.allocation_nodes(allocation)]


def _get(allocation_id: int) -> Allocation:
    allocation = selectors.allocations_all().filter(id=allocation_id).first()
    if allocation is None:
        raise NotFound(f"Slurm allocation {allocation_id} does not exist.")
    return allocation


class AllocationListApi(APIView):
    permission_classes = [IsStaff]

    class InputSerializer(serializers.Serializer):
        nodes = serializers.IntegerField(min_value=1, max_value=10_000)
        partition = serializers.CharField(max_length=100, required=False, allow_blank=True)
        gres = serializers.CharField(max_length=100, required=False, allow_blank=True)
        time_limit = serializers.CharField(max_length=32, required=False, allow_blank=True)

    @extend_schema(responses={200: AllocationOutputSerializer(many=True), **ERRORS})
    def get(self, request):
        return Response(AllocationOutputSerializer(selectors.allocations_all(), many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: AllocationOutputSerializer, **SLURM_ERRORS},
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        server = settings.CONTROL_PLANE_URL or request.build_absolute_uri("/").rstrip("/")
        allocation = services.allocation_create(
            request=sbatch.Request(
                nodes=v["nodes"],
                partition=v.get("partition", ""),
                gres=v.get("gres", ""),
                time_limit=v.get("time_limit", ""),
            ),
            server=server,
            created_by=request.user,
        )
        return Response(
            AllocationOutputSerializer(_get(allocation.id)).data, status=status.HTTP_201_CREATED
        )


class AllocationDetailApi(APIView):
    permission_classes = [IsStaff]

    @extend_schema(responses={200: AllocationOutputSerializer, **ERRORS})
    def get(self, request, allocation_id: int):
        return Response(AllocationOutputSerializer(_get(allocation_id)).data)


class AllocationReleaseApi(APIView):
    permission_classes = [IsStaff]

    @extend_schema(request=None, responses={200: AllocationOutputSerializer, **SLURM_ERRORS})
    def post(self, request, allocation_id: int):
        services.allocation_release(allocation_id=allocation_id)
        return Response(AllocationOutputSerializer(_get(allocation_id)).data)
