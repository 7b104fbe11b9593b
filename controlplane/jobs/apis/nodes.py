"""REST endpoints for nodes as people see them: the list (every user), and what staff do
to a node — drain it, take it back into service, revoke it, delete it — and the join
tokens agents enrol with (list, create with the setup of the node to add, revoke). The
agents' own endpoints are in :mod:`controlplane.jobs.apis.agents`."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api import ERRORS, ErrorSerializer
from controlplane.jobs import node_setup, selectors
from controlplane.jobs.models import JoinToken, Node
from controlplane.jobs.services import nodes
from controlplane.jobs.services.nodes import JOIN_TOKEN_DEFAULT_EXPIRY

NODE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"  # as agents enrol (apis.agents)


class IsStaff(IsAdminUser):
    message = "Only staff may manage nodes and join tokens."


class NodeOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    address = serializers.CharField()
    slots = serializers.IntegerField()
    labels = serializers.DictField(child=serializers.CharField())
    status = serializers.ChoiceField(choices=Node.Status.choices)
    status_reason = serializers.CharField(
        help_text="Why the node is lost, revoked or incompatible, and what to do."
    )
    draining = serializers.BooleanField(
        help_text="Drained by an admin: no new workers go there; those running carry on."
    )
    agent_version = serializers.CharField(help_text="The agent's package version, as it said.")
    protocol = serializers.IntegerField(allow_null=True, help_text="The protocol it speaks.")
    code_kinds = serializers.ListField(
        child=serializers.CharField(),
        help_text="The kinds of code it runs (its AGENT_CODE): bundles, installed, examples.",
    )
    workers_active = serializers.IntegerField(help_text="Workers running or starting there.")
    gpus = serializers.ListField(
        child=serializers.DictField(),
        help_text="Its GPUs as the latest heartbeat said: uuid, name, memory_total_mib, "
        "utilization_pct, memory_used_mib, temperature_c, power_w, and the job and worker "
        "(rank) that own each.",
    )
    last_heartbeat = serializers.DateTimeField(allow_null=True)
    unreachable_since = serializers.DateTimeField(
        allow_null=True,
        help_text="When the node was found silent (status unreachable); null otherwise.",
    )
    created_at = serializers.DateTimeField(help_text="When it enrolled.")


def _node(node_id: int) -> dict:
    return NodeOutputSerializer(selectors.nodes_all().get(id=node_id)).data


class NodeListApi(APIView):
    @extend_schema(responses={200: NodeOutputSerializer(many=True), **ERRORS})
    def get(self, request):
        return Response(NodeOutputSerializer(selectors.nodes_all(), many=True).data)


class NodeDetailApi(APIView):
    permission_classes = [IsStaff]

    @extend_schema(
        responses={204: None, 409: ErrorSerializer, **ERRORS},
        summary="Delete a node that runs no worker (409 naming the jobs otherwise)",
    )
    def delete(self, request, node_id: int):
        nodes.node_delete(node_id=node_id, actor=f"user:{request.user.username}")
        return Response(status=status.HTTP_204_NO_CONTENT)


class NodeDrainApi(APIView):
    permission_classes = [IsStaff]

    @extend_schema(
        request=None,
        responses={200: NodeOutputSerializer, 409: ErrorSerializer, **ERRORS},
        summary="Drain a node: no new workers go there; those running carry on",
    )
    def post(self, request, node_id: int):
        node = nodes.node_set_draining(
            node_id=node_id, draining=True, actor=f"user:{request.user.username}"
        )
        return Response(_node(node.id))


class NodeResumeApi(APIView):
    permission_classes = [IsStaff]

    @extend_schema(
        request=None,
        responses={200: NodeOutputSerializer, 409: ErrorSerializer, **ERRORS},
        summary="Take a drained node back into service",
    )
    def post(self, request, node_id: int):
        node = nodes.node_set_draining(
            node_id=node_id, draining=False, actor=f"user:{request.user.username}"
        )
        return Response(_node(node.id))


class NodeRevokeApi(APIView):
    permission_classes = [IsStaff]

    @extend_schema(
        request=None,
        responses={200: NodeOutputSerializer, **ERRORS},
        summary="Revoke a node: its credential is refused and its jobs go on without it",
    )
    def post(self, request, node_id: int):
        node = nodes.node_revoke(node_id=node_id, actor=f"user:{request.user.username}")
        return Response(_node(node.id))


# --- join tokens ---------------------------------------------------------------------------


class JoinTokenOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    label = serializers.CharField()
    prefix = serializers.CharField(help_text="The first characters, to recognise the token.")
    created_by = serializers.CharField(source="created_by.username", allow_null=True)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    uses_allowed = serializers.IntegerField()
    uses_left = serializers.IntegerField()
    revoked_at = serializers.DateTimeField(allow_null=True)
    state = serializers.SerializerMethodField(
        help_text="active, expired, used_up or revoked: whether an agent may enrol with it."
    )
    nodes = serializers.SerializerMethodField(help_text="Names of the nodes enrolled with it.")

    def get_state(self, token: JoinToken) -> str:
        if token.revoked_at is not None:
            return "revoked"
        if token.expires_at <= timezone.now():
            return "expired"
        return "used_up" if token.uses_left == 0 else "active"

    def get_nodes(self, token: JoinToken) -> list[str]:
        return sorted(n.name for n in token.nodes.all())


SetupSerializer = inline_serializer(
    "NodeSetup",
    {
        "kind": serializers.CharField(),
        "install": serializers.CharField(
            help_text="Shell commands: a user, a venv, the pip install."
        ),
        "env_file": serializers.CharField(
            help_text="The agent's environment file, token included."
        ),
        "env_file_path": serializers.CharField(),
        "unit": serializers.CharField(help_text="The agent's systemd unit."),
        "unit_path": serializers.CharField(),
        "start": serializers.CharField(help_text="Shell commands that start the agent."),
        "doc": serializers.CharField(),
    },
)


class JoinTokenListCreateApi(APIView):
    permission_classes = [IsStaff]

    class InputSerializer(serializers.Serializer):
        label = serializers.CharField(max_length=100, required=False, allow_blank=True)
        uses = serializers.IntegerField(
            min_value=1, max_value=1000, default=1, help_text="Enrolments it is good for."
        )
        expires_in_hours = serializers.FloatField(
            min_value=0.05,
            max_value=24 * 365,
            default=JOIN_TOKEN_DEFAULT_EXPIRY.total_seconds() / 3600,
        )
        kind = serializers.ChoiceField(
            choices=sorted(node_setup.EXTRAS),
            default="cpu",
            help_text="The kind of node the setup in the answer is for: its pip extras.",
        )
        node_name = serializers.RegexField(
            NODE_NAME,
            max_length=100,
            required=False,
            allow_blank=True,
            help_text="AGENT_NAME in the setup's environment file (unset: the host name).",
        )

    class CreatedSerializer(JoinTokenOutputSerializer):
        token = serializers.CharField(help_text="The secret: shown only now.")
        setup = SetupSerializer

    @extend_schema(responses={200: JoinTokenOutputSerializer(many=True), **ERRORS})
    def get(self, request):
        return Response(JoinTokenOutputSerializer(selectors.join_tokens_all(), many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: CreatedSerializer, **ERRORS},
        summary="Create a join token; the answer holds its secret and the node's setup",
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        token, secret = nodes.join_token_create(
            label=v.get("label", ""),
            created_by=request.user,
            uses=v["uses"],
            expires_in=timedelta(hours=v["expires_in_hours"]),
        )
        # The URL agents reach the control plane at: the setting, else as the browser did.
        server = settings.CONTROL_PLANE_URL or request.build_absolute_uri("/").rstrip("/")
        setup = node_setup.node_setup(
            server=server, join_token=secret, kind=v["kind"], name=v.get("node_name", "")
        )
        return Response(
            {
                **JoinTokenOutputSerializer(token).data,
                "token": secret,
                "setup": setup.to_dict(),
            },
            status=status.HTTP_201_CREATED,
        )


class JoinTokenDetailApi(APIView):
    permission_classes = [IsStaff]

    @extend_schema(
        responses={200: JoinTokenOutputSerializer, **ERRORS},
        summary="Revoke a join token (nodes enrolled with it keep their credentials)",
    )
    def delete(self, request, token_id: int):
        token = nodes.join_token_revoke(token_id=token_id)
        return Response(JoinTokenOutputSerializer(token).data)
