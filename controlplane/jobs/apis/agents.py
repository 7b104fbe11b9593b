"""The agents' own REST endpoints: enrolment with a join token, heartbeat, worker ports
and the cluster spec, job reports. The agents' metric batches are the metrics app's
(``metrics.apis``); what people see of nodes is :mod:`controlplane.jobs.apis.nodes`."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from agent.protocol import vocabulary
from controlplane.api import ERRORS, OK, ErrorSerializer
from controlplane.bundles import selectors as bundle_selectors
from controlplane.bundles import services as bundle_services
from controlplane.errors import InvalidInput, NotFound
from controlplane.jobs import selectors
from controlplane.jobs.apis.nodes import NODE_NAME
from controlplane.jobs.auth import AgentApi
from controlplane.jobs.services import membership, nodes, reports

# --- agent side ----------------------------------------------------------------------------


class _AgentVersions(serializers.Serializer):
    """What an agent says of itself at enrolment and with every heartbeat."""

    agent_version = serializers.CharField(
        max_length=50, required=False, allow_blank=True, help_text="The agent's package version."
    )
    protocol = serializers.IntegerField(
        min_value=0,
        required=False,
        allow_null=True,
        help_text="The protocol the agent speaks (absent: 1, an agent from before versions).",
    )
    code = serializers.ListField(
        child=serializers.ChoiceField(choices=list(vocabulary.CODE_KINDS)),
        required=False,
        allow_null=True,
        max_length=len(vocabulary.CODE_KINDS),
        help_text="The kinds of code the node runs (its AGENT_CODE); absent: installed and "
        "examples (an agent from before code bundles).",
    )


class AgentEnrolApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(_AgentVersions):
        join_token = serializers.CharField(max_length=200)
        name = serializers.RegexField(NODE_NAME, max_length=100)
        address = serializers.CharField(max_length=255)
        slots = serializers.IntegerField(min_value=1, max_value=1024)
        labels = serializers.DictField(child=serializers.CharField(max_length=200), required=False)

    @extend_schema(
        request=InputSerializer,
        responses={
            201: inline_serializer(
                "Enrolment",
                {
                    "node": serializers.IntegerField(),
                    "name": serializers.CharField(),
                    "credential": serializers.CharField(),
                },
            ),
            409: ErrorSerializer,
            **ERRORS,
        },
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        node, credential = nodes.node_enrol(
            join_token=v["join_token"],
            name=v["name"],
            address=v["address"],
            slots=v["slots"],
            labels=v.get("labels", {}),
            agent_version=v.get("agent_version", ""),
            protocol=v.get("protocol"),
            code=v.get("code"),
        )
        return Response(
            {"node": node.id, "name": node.name, "credential": credential},
            status=status.HTTP_201_CREATED,
        )


class GpuStatSerializer(serializers.Serializer):
    """One GPU as a heartbeat says it (agent.protocol.rest.GpuStat)."""

    uuid = serializers.CharField(max_length=100)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    memory_total_mib = serializers.FloatField(required=False, allow_null=True, default=None)
    utilization_pct = serializers.FloatField(required=False, allow_null=True, default=None)
    memory_used_mib = serializers.FloatField(required=False, allow_null=True, default=None)
    temperature_c = serializers.FloatField(required=False, allow_null=True, default=None)
    power_w = serializers.FloatField(required=False, allow_null=True, default=None)
    job = serializers.IntegerField(required=False, allow_null=True, default=None)
    rank = serializers.IntegerField(required=False, allow_null=True, default=None)


class AgentHeartbeatApi(AgentApi):
    class InputSerializer(_AgentVersions):
        jobs = serializers.ListField(
            child=serializers.IntegerField(min_value=1, max_value=2**31 - 1),
            required=False,
            max_length=10_000,
        )
        # A list field, not many=True: DRF hands allow_null to a many=True child too,
        # and [null] must be a 400, not a GPU.
        gpus = serializers.ListField(
            child=GpuStatSerializer(),
            required=False,
            allow_null=True,
            max_length=256,
            help_text="The node's GPUs now: model, memory, utilisation, temperature, power "
            "and the worker that owns each (absent: an agent without GPUs or from before).",
        )

    @extend_schema(
        request=InputSerializer,
        responses={
            200: inline_serializer(
                "HeartbeatReply",
                {
                    "ok": serializers.BooleanField(),
                    "heartbeat_timeout_s": serializers.FloatField(),
                    "release": serializers.ListField(
                        child=serializers.IntegerField(),
                        help_text=(
                            "Jobs among those listed whose workers the agent should end: finished, or no longer "
                            "counting on this node (it was taken for lost meanwhile)."
                        ),
                    ),
                },
            ),
            **ERRORS,
        },
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        release = nodes.node_heartbeat(
            node=request.auth,
            running_jobs=v.get("jobs"),
            agent_version=v.get("agent_version", ""),
            protocol=v.get("protocol"),
            code=v.get("code"),
            gpus=None if v.get("gpus") is None else [dict(g) for g in v["gpus"]],
        )
        return Response(
            {
                "ok": True,
                "heartbeat_timeout_s": settings.AGENT_HEARTBEAT_TIMEOUT_S,
                "release": release,
            }
        )


ClusterSpecSerializer = inline_serializer(
    "ClusterSpec",
    {
        "job": serializers.IntegerField(),
        "version": serializers.IntegerField(),
        "world_size": serializers.IntegerField(),
        "complete": serializers.BooleanField(),
        "workers_min": serializers.IntegerField(),
        "members": serializers.ListField(child=serializers.CharField(allow_null=True)),
    },
)


class AgentJobWorkersApi(AgentApi):
    class InputSerializer(serializers.Serializer):
        workers = serializers.ListField(
            child=serializers.DictField(), min_length=1, max_length=1024
        )

    @extend_schema(request=InputSerializer, responses={200: ClusterSpecSerializer, **ERRORS})
    def post(self, request, job_id: int):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = membership.workers_register(
            node=request.auth, job_id=job_id, workers=data.validated_data["workers"]
        )
        return Response(selectors.cluster_spec(job=job))


class AgentClusterSpecApi(AgentApi):
    """The job's latest cluster version (members in rank order); changes are also pushed
    on /ws/agent/ as ``cluster`` frames."""

    @extend_schema(responses={200: ClusterSpecSerializer, **ERRORS})
    def get(self, request, job_id: int):
        job = selectors.job_get_for_node(node=request.auth, job_id=job_id)
        return Response(selectors.cluster_spec(job=job))


class AgentJobReportApi(AgentApi):
    class InputSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=["running", "succeeded", "failed", "stopped"])
        reason = serializers.CharField(max_length=2000, required=False, allow_blank=True)
        workers = serializers.ListField(child=serializers.DictField(), required=False)

    @extend_schema(request=InputSerializer, responses={200: OK, **ERRORS})
    def post(self, request, job_id: int):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        try:
            reports.job_report(
                node=request.auth,
                job_id=job_id,
                status=v["status"],
                reason=v.get("reason", ""),
                workers=v.get("workers"),
            )
        except KeyError as exc:
            raise InvalidInput(f"each worker needs {exc.args[0]!r}") from None
        return Response({"ok": True})


class AgentGoodbyeApi(AgentApi):
    """The agent stops on purpose (SIGTERM/SIGINT): its node goes offline at once."""

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=200, required=False, allow_blank=True)
        detached = serializers.ListField(
            child=serializers.IntegerField(min_value=1, max_value=2**31 - 1),
            required=False,
            max_length=10_000,
        )

    @extend_schema(request=InputSerializer, responses={200: OK, **ERRORS})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        nodes.node_goodbye(
            node=request.auth, reason=v.get("reason", ""), detached=v.get("detached", [])
        )
        return Response({"ok": True})


class AgentLeaveApi(AgentApi):
    """The agent is about to stop for good (AGENT_ON_EXIT=leave: its Slurm allocation
    ends): the node is drained and its elastic jobs shrink its workers away first."""

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=200, required=False, allow_blank=True)

    @extend_schema(
        request=InputSerializer,
        responses={
            200: inline_serializer(
                "AgentLeaveOutput",
                {
                    "ok": serializers.BooleanField(),
                    "kept": serializers.ListField(child=serializers.IntegerField()),
                },
            ),
            **ERRORS,
        },
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        kept = nodes.node_leave(
            node=request.auth, reason=data.validated_data.get("reason") or "the agent leaves"
        )
        return Response({"ok": True, "kept": kept})


class AgentBundleApi(AgentApi):
    """A code bundle for a job this node runs (``GET /api/v1/agent/bundles/{digest}/``): the
    archive's bytes; the agent checks the digest before unpacking."""

    @extend_schema(responses={(200, "application/gzip"): OpenApiTypes.BINARY, **ERRORS})
    def get(self, request, digest: str):
        if not selectors.node_may_read_bundle(node=request.auth, digest=digest):
            raise NotFound(f"No unfinished job on this node runs bundle {digest}.")
        bundle = bundle_selectors.bundle_get(digest)
        return HttpResponse(
            bundle_services.bundle_read(bundle),
            content_type="application/gzip",
            headers={"X-Bundle-Digest": bundle.digest},
        )
