"""REST endpoints for a job's runs (list, restart as a new run) and its commands (list,
issue one by hand: the same actions as a policy's)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api import ERRORS
from controlplane.errors import json_type
from controlplane.jobs import selectors
from controlplane.jobs.models import Command, Job, Run
from controlplane.jobs.services import commands as command_services
from controlplane.jobs.services import jobs as job_services


class RunOutputSerializer(serializers.ModelSerializer):
    resumed_from = serializers.CharField(
        allow_null=True,
        help_text=(
            "the checkpoint folder the run's workers restore before training; null: from scratch"
        ),
    )
    workers_min_seen = serializers.IntegerField(
        allow_null=True,
        help_text=(
            "the fewest workers any of the run's cluster versions had (null before version 1)"
        ),
    )
    workers_max_seen = serializers.IntegerField(
        allow_null=True,
        help_text=(
            "the most workers any of the run's cluster versions had (null before version 1)"
        ),
    )

    class Meta:
        model = Run
        fields = [
            "id",
            "number",
            "status",
            "status_reason",
            "created_by",
            "reason",
            "resumed_from",
            "resumed_from_step",
            "resume_note",
            "cluster_version",
            "workers_min_seen",
            "workers_max_seen",
            "last_step",
            "created_at",
            "started_at",
            "finished_at",
        ]
        extra_kwargs = {
            "created_by": {
                "help_text": "scheduler (the job's first placement) or user:<name> (a restart)"
            },
            "cluster_version": {
                "help_text": "the run's latest cluster version (0 until every initial worker "
                "registered)"
            },
            "last_step": {"help_text": "the job's step when the run's status last changed"},
        }

    def to_representation(self, run: Run) -> dict:
        data = super().to_representation(run)
        data["resumed_from"] = run.resumed_from or None
        return data


class CurrentRunSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Run.Status.choices)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class RunPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = RunOutputSerializer(many=True)


class CheckpointPathField(serializers.CharField):
    """A checkpoint folder: a string only (a number is not a path), or null for none."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError(
                f"must be a string: the path of a checkpoint folder on the job's nodes, such as "
                f'"/data/ckpt/step-000000500" (or null to start from scratch); got {json_type(data)}.'
            )
        if "\x00" in data:
            raise serializers.ValidationError("must not contain NUL characters.")
        return super().to_internal_value(data)


class JobRunListApi(APIView):
    @extend_schema(
        responses={200: RunPageSerializer, **ERRORS},
        parameters=[OpenApiParameter("limit", int), OpenApiParameter("offset", int)],
    )
    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(selectors.job_runs(job), request, view=self)
        return paginator.get_paginated_response(RunOutputSerializer(page, many=True).data)


class JobRestartApi(APIView):
    """Start a new run of a finished job; returns the run (pending until it is placed)."""

    class InputSerializer(serializers.Serializer):
        resume_from = CheckpointPathField(
            max_length=500,
            required=False,
            allow_null=True,
            trim_whitespace=False,
            help_text=(
                "checkpoint folder to resume from; omitted: the job's latest checkpoint if it recorded "
                "one, else from scratch; null: from scratch"
            ),
        )
        reason = serializers.CharField(
            max_length=500,
            required=False,
            allow_blank=True,
            help_text="why, for the run's record and the audit trail",
        )

    @extend_schema(
        request=InputSerializer, responses={201: RunOutputSerializer, 409: ERRORS[400], **ERRORS}
    )
    def post(self, request, job_id: int):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        run = job_services.job_restart(
            job=job,
            actor=f"user:{request.user.username}",
            resume_from=v["resume_from"] if "resume_from" in v else job_services.LATEST_CHECKPOINT,
            reason=v.get("reason", ""),
        )
        return Response(RunOutputSerializer(run).data, status=status.HTTP_201_CREATED)


class CommandOutputSerializer(serializers.ModelSerializer):
    node = serializers.CharField(source="node.name")
    action = serializers.CharField(source="type")

    class Meta:
        model = Command
        fields = [
            "id",
            "seq",
            "action",
            "payload",
            "state",
            "node",
            "issued_by",
            "applied_step",
            "error",
            "created_at",
            "acked_at",
            "finished_at",
        ]


class JobCommandsApi(APIView):
    MANUAL_ACTIONS = [t for t in Command.Type.values if t != Command.Type.START]

    class InputSerializer(serializers.Serializer):
        action = serializers.ChoiceField(choices=[t for t in Command.Type.values if t != "start"])
        value = serializers.JSONField(required=False, allow_null=True)
        idempotency_key = serializers.CharField(max_length=100, required=False)

        def validate(self, attrs):
            action, value = attrs["action"], attrs.get("value")
            if action == "set_batch_size":
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65536:
                    raise serializers.ValidationError(
                        {"value": "set_batch_size needs an integer from 1 to 65536."}
                    )
            elif action == "set_lr":
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not 0 < value <= 10
                ):
                    raise serializers.ValidationError(
                        {"value": "set_lr needs a number in (0, 10]."}
                    )
            elif action == "set_strategy":
                if value not in Job.Strategy.values:
                    raise serializers.ValidationError(
                        {"value": f"set_strategy needs one of {', '.join(Job.Strategy.values)}."}
                    )
            elif action == "set_topology":
                if value not in Job.Topology.values:
                    raise serializers.ValidationError(
                        {"value": f"set_topology needs one of {', '.join(Job.Topology.values)}."}
                    )
            elif action == "scale_workers":
                # The job's own bounds (workers min and max) are checked by the service.
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1024:
                    raise serializers.ValidationError(
                        {
                            "value": "scale_workers needs an integer number of workers (the job's new size)."
                        }
                    )
            return attrs

    @extend_schema(responses={200: CommandOutputSerializer(many=True), **ERRORS})
    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        return Response(CommandOutputSerializer(selectors.job_commands(job), many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={
            201: CommandOutputSerializer(many=True),
            409: ERRORS[400],
            422: ERRORS[400],
            **ERRORS,
        },
    )
    def post(self, request, job_id: int):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        commands = command_services.command_issue(
            job=job,
            type=v["action"],
            value=v.get("value"),
            issued_by=f"user:{request.user.username}",
            idempotency_key=v.get("idempotency_key"),
        )
        return Response(
            CommandOutputSerializer(commands, many=True).data, status=status.HTTP_201_CREATED
        )
