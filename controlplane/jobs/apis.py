"""REST endpoints for jobs, their runs, commands, metrics and events, nodes, and the agent side.

Each API parses input, checks permission, makes one service or selector call and
serialises the result.
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.errors import InvalidInput, NotFound
from controlplane.jobs import selectors, services, tokens
from controlplane.jobs.auth import IsNode, NodeCredentialAuthentication
from controlplane.jobs.models import Command, Job, Run
from controlplane.live import selectors as live_selectors
from controlplane.live import services as live_services
from controlplane.live.downsample import DEFAULT_DOWNSAMPLE, DOWNSAMPLE_METHODS
from controlplane.policies.models import Policy
from controlplane.schema import ERRORS

HYPERPARAMETER_LIMITS = {
    # name: (type, minimum, maximum, default or None when required)
    "batch_size": (int, 1, 65536, None),
    "lr": (float, 1e-9, 10.0, None),
    "steps": (int, 1, 10_000_000, 1000),
    "log_every": (int, 1, 10_000, 10),
    "seed": (int, 0, 2**31 - 1, 0),
    "monitor_every": (int, 0, 10_000, 1),
    "sma_alpha": (float, 1e-6, 1.0, 0.1),
    "checkpoint_every": (int, 0, 10_000_000, 0),
    "samples": (int, 10, 1_000_000, "optional"),  # examples.synthetic_cnn: data set size
}
# Text hyper-parameters: name → (allowed values, or None for a path), default.
TEXT_HYPERPARAMETERS = {
    "lr_scaling": (("none", "linear", "sqrt", "adascale"), "none"),
    "checkpoint_dir": (None, None),
    "resume_from": (None, None),
}


def validate_hyperparameters(raw: dict) -> dict:
    if not isinstance(raw, dict):
        raise serializers.ValidationError(
            'Must be an object such as {"batch_size": 32, "lr": 0.05}.'
        )
    known = [*HYPERPARAMETER_LIMITS, *TEXT_HYPERPARAMETERS]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise serializers.ValidationError(
            f"Unknown hyper-parameter(s) {', '.join(unknown)}; known: {', '.join(known)}."
        )
    clean = {}
    for name, (choices, default) in TEXT_HYPERPARAMETERS.items():
        value = raw.get(name, default)
        if value is None:
            continue
        if not isinstance(value, str) or not 1 <= len(value) <= 500 or "\x00" in value:
            raise serializers.ValidationError(f"{name} must be a string of 1 to 500 characters.")
        if choices is not None and value not in choices:
            raise serializers.ValidationError(
                f"{name} must be one of {', '.join(choices)}; got {value!r}."
            )
        clean[name] = value
    for name, (kind, low, high, default) in HYPERPARAMETER_LIMITS.items():
        if name not in raw:
            if default is None:
                raise serializers.ValidationError(f"{name} is required.")
            if default != "optional":
                clean[name] = default
            continue
        value = raw[name]
        ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            raise serializers.ValidationError(
                f"{name} must be {'an integer' if kind is int else 'a number'}."
            )
        if not low <= value <= high:
            raise serializers.ValidationError(
                f"{name} must be between {low} and {high}; got {value}."
            )
        clean[name] = kind(value)
    return clean


NODE_SELECTOR_SCHEMA = {
    "type": "object",
    "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 200},
    "maxProperties": services.NODE_SELECTOR_MAX_ENTRIES,
    "example": {"gpu": "a100"},
    "description": "Node labels the job's workers need: only nodes whose labels contain every "
    "label → value pair run them (initial placement and scale_workers). Empty: any node.",
}


@extend_schema_field(NODE_SELECTOR_SCHEMA)
class NodeSelectorField(serializers.JSONField):
    """A flat object of label → value strings; the service says what is wrong with others."""

    def to_internal_value(self, data):
        try:
            return services.node_selector_clean(super().to_internal_value(data))
        except InvalidInput as exc:
            raise serializers.ValidationError(exc.message) from None


class WorkersSerializer(serializers.Serializer):
    initial = serializers.IntegerField(min_value=1, max_value=64)
    min = serializers.IntegerField(min_value=1, max_value=64, required=False)
    max = serializers.IntegerField(min_value=1, max_value=64, required=False)


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


class JobOutputSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username")
    workers = serializers.SerializerMethodField()
    parameters = serializers.SerializerMethodField()
    node_selector = NodeSelectorField(read_only=True)
    current_run = CurrentRunSerializer(
        read_only=True,
        allow_null=True,
        help_text=(
            "the run (attempt) the job's status and workers are about; null until the job is first placed"
        ),
    )

    class Meta:
        model = Job
        fields = [
            "id",
            "name",
            "owner",
            "entrypoint",
            "status",
            "status_reason",
            "hyperparameters",
            "strategy",
            "topology",
            "policy",
            "policy_version",
            "node_selector",
            "parameters",
            "workers",
            "cluster_version",
            "current_run",
            "last_step",
            "created_at",
            "started_at",
            "finished_at",
        ]

    def get_parameters(self, job: Job) -> dict:
        return {
            "batch_size": job.batch_size,
            "lr": job.learning_rate,
            "workers": job.workers_current,
            "workers_min": job.workers_min,
            "workers_max": job.workers_max,
            "workers_wanted": job.wanted_workers,
            "strategy": job.strategy,
            "topology": job.topology,
        }

    def get_workers(self, job: Job) -> list[dict]:
        """The workers of the job's current run. ``rank`` is the worker's fixed number in the
        run; ``cluster_rank`` its rank in the run's latest cluster version (null when it is
        not a member)."""
        members = selectors.job_cluster_members(job)
        return [
            {
                "rank": w.rank,
                "cluster_rank": members.index(w.rank) if w.rank in members else None,
                "node": w.node.name,
                "port": w.port,
                "state": w.state,
                "cluster_version": w.cluster_version,
            }
            for w in job.workers.all()
            if w.run_id == job.current_run_id
        ]


class JobPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = JobOutputSerializer(many=True)


class SeriesSerializer(serializers.Serializer):
    name = serializers.CharField()
    rank = serializers.IntegerField(allow_null=True, help_text="null for a whole-job series")
    points = serializers.IntegerField(help_text="points stored, before downsampling")
    step = serializers.ListField(child=serializers.IntegerField())
    value = serializers.ListField(child=serializers.FloatField())
    time = serializers.ListField(child=serializers.FloatField(), help_text="unix seconds")


class MetricsOutputSerializer(serializers.Serializer):
    job = serializers.IntegerField()
    run = serializers.IntegerField(
        allow_null=True,
        help_text=(
            "the number of the run these series are of (null: the job has no run yet, and no series)"
        ),
    )
    seq = serializers.IntegerField(help_text="the job's live sequence number when this was read")
    series = SeriesSerializer(many=True)


class EventOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    run = serializers.IntegerField(
        allow_null=True, help_text="the job's current run then (null: not placed yet)"
    )
    kind = serializers.CharField()
    actor = serializers.CharField()
    message = serializers.CharField()
    data = serializers.JSONField()
    step = serializers.IntegerField(allow_null=True)
    time = serializers.DateTimeField()


class NodeOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    address = serializers.CharField()
    slots = serializers.IntegerField()
    labels = serializers.DictField(child=serializers.CharField())
    status = serializers.CharField()
    last_heartbeat = serializers.DateTimeField(allow_null=True)


OK = inline_serializer("Ok", {"ok": serializers.BooleanField()})


class JobListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        entrypoint = serializers.ChoiceField(choices=sorted(services.ENTRYPOINTS))
        hyperparameters = serializers.JSONField()
        workers = WorkersSerializer()
        strategy = serializers.ChoiceField(choices=Job.Strategy.values, default=Job.Strategy.SSGD)

        topology = serializers.ChoiceField(choices=Job.Topology.values, default=Job.Topology.RING)
        policy = serializers.IntegerField(required=False, allow_null=True)
        node_selector = NodeSelectorField(required=False, default=dict)

        def validate_hyperparameters(self, value):
            return validate_hyperparameters(value)

    @extend_schema(
        responses={200: JobPageSerializer, **ERRORS},
        parameters=[
            OpenApiParameter("status", str, description="comma-separated statuses"),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
        ],
    )
    def get(self, request):
        qs = selectors.jobs_visible_to(request.user)
        wanted = request.query_params.get("status")
        if wanted:
            bad = sorted(set(wanted.split(",")) - set(Job.Status.values))
            if bad:
                raise InvalidInput(
                    f"Unknown status {', '.join(bad)}; use {', '.join(Job.Status.values)}."
                )
            qs = qs.filter(status__in=wanted.split(","))
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(JobOutputSerializer(page, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: JobOutputSerializer, **ERRORS})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        policy = None
        if v.get("policy") is not None:
            policy = Policy.objects.filter(id=v["policy"]).first()
            if policy is None or (policy.owner_id != request.user.id and not request.user.is_staff):
                raise InvalidInput(
                    f"Policy {v['policy']} does not exist or is not yours.",
                    details={"policy": v["policy"]},
                )
        workers = v["workers"]
        job = services.job_create(
            owner=request.user,
            name=v["name"],
            entrypoint=v["entrypoint"],
            hyperparameters=v["hyperparameters"],
            workers_initial=workers["initial"],
            workers_min=workers.get("min", workers["initial"]),
            workers_max=workers.get("max", workers["initial"]),
            strategy=v["strategy"],
            topology=v["topology"],
            policy=policy,
            node_selector=v["node_selector"],
        )
        return Response(JobOutputSerializer(job).data, status=status.HTTP_201_CREATED)


class JobDetailApi(APIView):
    @extend_schema(responses={200: JobOutputSerializer, **ERRORS})
    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        return Response(JobOutputSerializer(job).data)


class JobCancelApi(APIView):
    @extend_schema(request=None, responses={200: JobOutputSerializer, 409: ERRORS[400], **ERRORS})
    def post(self, request, job_id: int):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        services.job_cancel(job=job, actor=f"user:{request.user.username}")
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        return Response(JobOutputSerializer(job).data)


class CheckpointPathField(serializers.CharField):
    """A checkpoint folder: a string only (a number is not a path), or null for none."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError(
                f"must be a string: the path of a checkpoint folder on the job's nodes, such as "
                f'"/data/ckpt/step-000000500" (or null to start from scratch); got {services.json_type(data)}.'
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
        run = services.job_restart(
            job=job,
            actor=f"user:{request.user.username}",
            resume_from=v["resume_from"] if "resume_from" in v else services.LATEST_CHECKPOINT,
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
        responses={201: CommandOutputSerializer(many=True), 409: ERRORS[400], **ERRORS},
    )
    def post(self, request, job_id: int):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        commands = services.command_issue(
            job=job,
            type=v["action"],
            value=v.get("value"),
            issued_by=f"user:{request.user.username}",
            idempotency_key=v.get("idempotency_key"),
        )
        return Response(
            CommandOutputSerializer(commands, many=True).data, status=status.HTTP_201_CREATED
        )


def int_query_param(request, name: str, *, default=None, low=None, high=None):
    """An integer query parameter, or ``default`` when absent; a 400 naming the parameter
    when it is not an integer or out of bounds."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(
            f"{name} must be an integer; got {raw!r}.", details={name: raw}
        ) from None
    if (low is not None and value < low) or (high is not None and value > high):
        limits = (
            f"between {low} and {high}"
            if low is not None and high is not None
            else f"at least {low}"
            if low is not None
            else f"at most {high}"
        )
        raise InvalidInput(f"{name} must be {limits}; got {value}.", details={name: raw})
    return value


def _downsample_param(request) -> str:
    raw = request.query_params.get("downsample") or DEFAULT_DOWNSAMPLE
    if raw not in DOWNSAMPLE_METHODS:
        raise InvalidInput(
            f"downsample must be one of {', '.join(DOWNSAMPLE_METHODS)}; got {raw!r}.",
            details={"downsample": raw, "allowed": list(DOWNSAMPLE_METHODS)},
        )
    return raw


class JobMetricsApi(APIView):
    @extend_schema(
        responses={200: MetricsOutputSerializer, **ERRORS},
        parameters=[
            OpenApiParameter(
                "names", str, description="comma-separated metric names (default: all)"
            ),
            OpenApiParameter(
                "run",
                int,
                description=(
                    "the run's number within the job (1, 2, …; default: the job's current run). Each run "
                    "counts its steps from its own start, so runs are read one at a time. An unknown number "
                    "is a 404 whose details.runs lists the job's runs"
                ),
            ),
            OpenApiParameter("since", int, description="first step"),
            OpenApiParameter("until", int, description="last step"),
            OpenApiParameter(
                "max_points",
                int,
                description="points per series after downsampling (2-100000, default 1000)",
            ),
            OpenApiParameter(
                "per_rank", bool, description="include per-worker series (default true)"
            ),
            OpenApiParameter(
                "downsample",
                str,
                enum=list(DOWNSAMPLE_METHODS),
                default=DEFAULT_DOWNSAMPLE,
                description=(
                    "how a series longer than max_points is cut: minmax keeps each bucket's lowest and highest "
                    "point (exact extremes); lttb (Largest-Triangle-Three-Buckets) keeps one point per bucket "
                    "that best preserves the line's shape, exactly max_points points"
                ),
            ),
        ],
    )
    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        names_raw = request.query_params.get("names", "")
        names = [n for n in names_raw.split(",") if n] or None
        run = selectors.job_run_get(job, int_query_param(request, "run", low=1))
        if run is None:  # never placed: nothing recorded yet
            job.refresh_from_db(fields=["live_seq"])
            return Response({"job": job.id, "run": None, "seq": job.live_seq, "series": []})
        series = live_selectors.run_metric_series(
            run_id=run.id,
            names=names,
            since=int_query_param(request, "since", low=0),
            until=int_query_param(request, "until", low=0),
            max_points=int_query_param(request, "max_points", default=1000, low=2, high=100_000),
            per_rank=request.query_params.get("per_rank", "true").lower() != "false",
            downsample=_downsample_param(request),
        )
        job.refresh_from_db(fields=["live_seq"])
        return Response({"job": job.id, "run": run.number, "seq": job.live_seq, "series": series})


class JobEventsApi(APIView):
    @extend_schema(
        responses={200: EventOutputSerializer(many=True), **ERRORS},
        parameters=[
            OpenApiParameter("after", int, description="only events with a larger id"),
            OpenApiParameter(
                "run",
                int,
                description=("only the events of this run (1-based); default: every run's"),
            ),
        ],
    )
    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        number = int_query_param(request, "run", low=1)
        run = selectors.job_run_get(job, number) if number is not None else None
        events = selectors.job_events(
            job, after_id=int_query_param(request, "after", low=0), run=run
        )[:1000]
        return Response(
            [
                {
                    "id": e.id,
                    "run": e.run.number if e.run else None,
                    "kind": e.kind,
                    "actor": e.actor,
                    "message": e.message,
                    "data": e.data,
                    "step": e.step,
                    "time": e.created_at.isoformat(),
                }
                for e in events
            ]
        )


class NodeListApi(APIView):
    @extend_schema(responses={200: NodeOutputSerializer(many=True), **ERRORS})
    def get(self, request):
        return Response(
            [
                {
                    "id": n.id,
                    "name": n.name,
                    "address": n.address,
                    "slots": n.slots,
                    "labels": n.labels,
                    "status": n.status,
                    "last_heartbeat": n.last_heartbeat,
                }
                for n in selectors.nodes_all()
            ]
        )


# --- agent side ----------------------------------------------------------------------------


class AgentEnrolApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        join_token = serializers.CharField(max_length=200)
        name = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", max_length=100)
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
            **ERRORS,
        },
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        node, credential = services.node_enrol(
            join_token=v["join_token"],
            name=v["name"],
            address=v["address"],
            slots=v["slots"],
            labels=v.get("labels", {}),
        )
        return Response(
            {"node": node.id, "name": node.name, "credential": credential},
            status=status.HTTP_201_CREATED,
        )


class AgentApi(APIView):
    authentication_classes = [NodeCredentialAuthentication]
    permission_classes = [IsNode]


class AgentHeartbeatApi(AgentApi):
    class InputSerializer(serializers.Serializer):
        jobs = serializers.ListField(
            child=serializers.IntegerField(min_value=1), required=False, max_length=10_000
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
        release = services.node_heartbeat(
            node=request.auth, running_jobs=data.validated_data.get("jobs")
        )
        return Response(
            {
                "ok": True,
                "heartbeat_timeout_s": settings.AGENT_HEARTBEAT_TIMEOUT_S,
                "release": release,
            }
        )


class AgentMetricsApi(AgentApi):
    @extend_schema(
        request=inline_serializer(
            "MetricBatch",
            {
                "batch_id": serializers.CharField(max_length=64),
                "points": serializers.ListField(
                    child=inline_serializer(
                        "MetricPointIn",
                        {
                            "job": serializers.IntegerField(),
                            "name": serializers.CharField(max_length=64),
                            "step": serializers.IntegerField(min_value=0),
                            "value": serializers.FloatField(),
                            "rank": serializers.IntegerField(required=False, allow_null=True),
                            "time": serializers.FloatField(),
                        },
                    )
                ),
            },
        ),
        responses={
            200: inline_serializer("MetricBatchReply", {"stored": serializers.IntegerField()}),
            201: inline_serializer("MetricBatchStored", {"stored": serializers.IntegerField()}),
            413: ERRORS[400],
            **ERRORS,
        },
    )
    def post(self, request):
        if not isinstance(request.data, dict):
            raise InvalidInput('Send an object {"batch_id": ..., "points": [...]}.')
        stored = live_services.metrics_ingest(
            node=request.auth,
            batch_id=request.data.get("batch_id"),
            points=request.data.get("points"),
        )
        return Response(
            {"stored": stored}, status=status.HTTP_201_CREATED if stored else status.HTTP_200_OK
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
        job = services.workers_register(
            node=request.auth, job_id=job_id, workers=data.validated_data["workers"]
        )
        return Response(services.cluster_spec(job=job))


class AgentClusterSpecApi(AgentApi):
    """The job's latest cluster version (members in rank order); changes are also pushed
    on /ws/agent/ as ``cluster`` frames."""

    @extend_schema(responses={200: ClusterSpecSerializer, **ERRORS})
    def get(self, request, job_id: int):
        job = Job.objects.filter(id=job_id, workers__node=request.auth).distinct().first()
        if job is None:
            raise NotFound(f"Job {job_id} has no workers on this node.")
        return Response(services.cluster_spec(job=job))


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
            services.job_report(
                node=request.auth,
                job_id=job_id,
                status=v["status"],
                reason=v.get("reason", ""),
                workers=v.get("workers"),
            )
        except KeyError as exc:
            raise InvalidInput(f"each worker needs {exc.args[0]!r}") from None
        return Response({"ok": True})


# --- API tokens ----------------------------------------------------------------------------


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
        return Response(TokenOutputSerializer(request.user.api_tokens.all(), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: CreatedSerializer, **ERRORS})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token, secret = tokens.token_create(user=request.user, **data.validated_data)
        return Response(
            {**TokenOutputSerializer(token).data, "token": secret}, status=status.HTTP_201_CREATED
        )


class TokenDetailApi(APIView):
    @extend_schema(responses={200: TokenOutputSerializer, **ERRORS})
    def delete(self, request, token_id: int):
        token = tokens.token_revoke(user=request.user, token_id=token_id)
        return Response(TokenOutputSerializer(token).data)
