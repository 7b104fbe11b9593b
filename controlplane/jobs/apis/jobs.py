"""REST endpoints for jobs: list and create (hyper-parameters and node selector checked),
detail, cancel, and the job's audit events.

Each API parses input, checks permission, makes one service or selector call and
serialises the result.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from agent.protocol import vocabulary
from controlplane.api import ERRORS, UPLOAD_ERRORS, int_query_param
from controlplane.bundles import services as bundle_services
from controlplane.errors import InvalidInput
from controlplane.jobs import selectors
from controlplane.jobs.apis.runs import CurrentRunSerializer
from controlplane.jobs.models import ENTRYPOINTS, Job, Node, Worker
from controlplane.jobs.services import housekeeping
from controlplane.jobs.services import jobs as job_services
from controlplane.metrics import selectors as metric_selectors
from controlplane.policies import selectors as policy_selectors

# The list's archived= values: hidden, only archived, both.
ARCHIVED_CHOICES: dict[str, bool | None] = {"false": False, "true": True, "any": None}

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
    "ring_probe_every": (int, 0, 10_000_000, "optional"),  # routed_ring: steps between probes
    "samples": (int, 10, 1_000_000, "optional"),  # examples.synthetic_cnn: data set size
    "bucket_mb": (float, 0.0, 1024.0, "optional"),  # PyTorch runtime: gradient bucket size
}
# Text hyper-parameters: name → (allowed values, or None for a path), default.
TEXT_HYPERPARAMETERS = {
    "lr_scaling": (tuple(vocabulary.LR_SCALING_RULES), "none"),
    "checkpoint_dir": (None, None),
    "resume_from": (None, None),
    "device": (("cpu", "cuda"), None),  # examples.synthetic_cnn_torch: where the model runs
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
    if clean.get("checkpoint_every") and not clean.get("checkpoint_dir"):
        raise serializers.ValidationError(
            "checkpoint_every needs checkpoint_dir: the folder (readable by the job's nodes) "
            "the workers write their checkpoints to."
        )
    return clean


NODE_SELECTOR_SCHEMA = {
    "type": "object",
    "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 200},
    "maxProperties": job_services.NODE_SELECTOR_MAX_ENTRIES,
    "example": {"gpu": "a100"},
    "description": "Node labels the job's workers need: only nodes whose labels contain every "
    "label → value pair run them (initial placement and scale_workers). Empty: any node.",
}


LABELS_HELP = (
    'Your own label → value pairs (e.g. {"team": "vision"}); the jobs list\'s q= searches '
    "them (q=team=vision for an exact pair)"
)


@extend_schema_field(NODE_SELECTOR_SCHEMA)
class NodeSelectorField(serializers.JSONField):
    """A flat object of label → value strings; the service says what is wrong with others."""

    def to_internal_value(self, data):
        try:
            return job_services.node_selector_clean(super().to_internal_value(data))
        except InvalidInput as exc:
            raise serializers.ValidationError(exc.message) from None


class WorkersSerializer(serializers.Serializer):
    initial = serializers.IntegerField(min_value=1, max_value=64)
    min = serializers.IntegerField(min_value=1, max_value=64, required=False)
    max = serializers.IntegerField(min_value=1, max_value=64, required=False)


class ProgressSerializer(serializers.Serializer):
    step = serializers.IntegerField(help_text="the highest step a worker reported")
    total = serializers.IntegerField(
        allow_null=True, help_text="the steps the job trains for (hyper-parameter steps)"
    )
    fraction = serializers.FloatField(allow_null=True, help_text="step / total, at most 1")
    eta_s = serializers.FloatField(
        allow_null=True,
        help_text="seconds left at the latest step_time the job reported; null when not "
        "running or no step time is known yet",
    )


def step_times_of(jobs) -> dict[int, float]:
    """The latest whole-job step_time (seconds per step) of each job's current run."""
    run_ids = [j.current_run_id for j in jobs if j.current_run_id is not None]
    return metric_selectors.runs_latest_whole_job_value(run_ids, "step_time")


def worker_timings_of(jobs) -> dict[int, dict[int, dict[str, float]]]:
    """Each worker's latest step_time and compute_time, by current run and rank."""
    run_ids = [j.current_run_id for j in jobs if j.current_run_id is not None]
    return metric_selectors.runs_latest_per_rank_values(run_ids, ["step_time", "compute_time"])


def job_progress(job: Job, step_time: float | None) -> dict:
    total = job.hyperparameters.get("steps") if isinstance(job.hyperparameters, dict) else None
    total = total if isinstance(total, int) and total > 0 else None
    step = job.last_step
    eta = None
    if total is not None and step_time is not None and step_time >= 0 and not job.is_terminal:
        eta = round(max(total - step, 0) * step_time, 1)
    return {
        "step": step,
        "total": total,
        "fraction": min(step / total, 1.0) if total else None,
        "eta_s": eta,
    }


class UnreachableNodeSerializer(serializers.Serializer):
    node = serializers.CharField()
    since = serializers.DateTimeField(allow_null=True)


class JobOutputSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username")
    bundle = serializers.CharField(
        source="bundle_digest", help_text="the code bundle's sha256; empty: installed code"
    )
    workers = serializers.SerializerMethodField()
    unreachable_nodes = serializers.SerializerMethodField()
    parameters = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()
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
            "bundle",
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
            "unreachable_nodes",
            "cluster_version",
            "current_run",
            "last_step",
            "progress",
            "created_at",
            "started_at",
            "finished_at",
            "labels",
            "archived_at",
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

    @extend_schema_field(ProgressSerializer)
    def get_progress(self, job: Job) -> dict:
        step_times = self.context.get("step_times")
        if step_times is None:
            step_times = step_times_of([job])
        return job_progress(job, step_times.get(job.current_run_id))

    def get_workers(self, job: Job) -> list[dict]:
        """The workers of the job's current run. ``rank`` is the worker's fixed number in the
        run; ``cluster_rank`` its rank in the run's latest cluster version (null when it is
        not a member). ``gpu``: the GPU it owns as its node's latest heartbeat said (null
        on a node without GPUs)."""
        members = selectors.job_cluster_members(job)
        # Each worker's own latest step and compute times: a straggler computes longer
        # (the others wait for it in the collectives, so their step times match its).
        timings = self.context.get("worker_timings")
        if timings is None:
            timings = worker_timings_of([job])
        timing = timings.get(job.current_run_id, {})
        return [
            {
                "rank": w.rank,
                "cluster_rank": members.index(w.rank) if w.rank in members else None,
                "node": w.node.name,
                "port": w.port,
                "state": w.state,
                "cluster_version": w.cluster_version,
                "step_time": timing.get(w.rank, {}).get("step_time"),
                "compute_time": timing.get(w.rank, {}).get("compute_time"),
                "gpu": next(
                    (g for g in w.node.gpus if g.get("job") == job.id and g.get("rank") == w.rank),
                    None,
                ),
            }
            for w in job.workers.all()
            if w.run_id == job.current_run_id
        ]

    @extend_schema_field(UnreachableNodeSerializer(many=True))
    def get_unreachable_nodes(self, job: Job) -> list[dict]:
        """The nodes of the job's active workers that stopped answering: ``since`` when.
        The job keeps its status meanwhile (its workers may still be training); past
        NODE_LOST_GRACE_S such a node is lost and the job goes on without it or fails."""
        seen: dict[str, Any] = {}
        for w in job.workers.all():
            if (
                w.run_id == job.current_run_id
                and w.state in Worker.ACTIVE
                and w.node.status == Node.Status.UNREACHABLE
            ):
                seen[w.node.name] = w.node.unreachable_since
        return [{"node": name, "since": since} for name, since in sorted(seen.items())]


class JobPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = JobOutputSerializer(many=True)


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


class JobListCreateApi(APIView):
    parser_classes = [JSONParser, MultiPartParser]

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        entrypoint = serializers.CharField(
            max_length=200,
            help_text=(
                "package.module (run like python -m) or package.module:function (called); "
                f"examples: {', '.join(sorted(ENTRYPOINTS))}"
            ),
        )
        bundle = serializers.RegexField(
            r"^[0-9a-f]{64}$",
            required=False,
            allow_blank=True,
            help_text="sha256 of a code bundle uploaded with POST /api/v1/bundles/, which "
            "the workers run in (the entrypoint is then a module of the bundle)",
        )
        hyperparameters = serializers.JSONField()
        workers = WorkersSerializer()
        strategy = serializers.ChoiceField(choices=Job.Strategy.values, default=Job.Strategy.SSGD)

        topology = serializers.ChoiceField(choices=Job.Topology.values, default=Job.Topology.RING)
        policy = serializers.IntegerField(required=False, allow_null=True)
        node_selector = NodeSelectorField(required=False, default=dict)
        labels = serializers.JSONField(required=False, default=dict, help_text=LABELS_HELP)

        def validate_hyperparameters(self, value):
            return validate_hyperparameters(value)

    @extend_schema(
        responses={200: JobPageSerializer, **ERRORS},
        parameters=[
            OpenApiParameter("status", str, description="comma-separated statuses"),
            OpenApiParameter(
                "q",
                str,
                description="text the job's name or a label contains (any case); "
                "label=value: jobs with that label",
            ),
            OpenApiParameter(
                "archived",
                str,
                enum=["false", "true", "any"],
                description="archived jobs: hidden (false, the default), only them (true), or "
                "both (any)",
            ),
            OpenApiParameter(
                "owner", str, description="the owner's username (staff; others see only theirs)"
            ),
            OpenApiParameter("node", str, description="jobs with workers (any run) on this node"),
            OpenApiParameter(
                "ordering",
                str,
                enum=[k for name in selectors.JOB_ORDERINGS for k in (name, f"-{name}")],
                description="sort key, descending with a leading '-'; default -created",
            ),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
        ],
    )
    def get(self, request):
        params = request.query_params
        wanted = params.get("status")
        statuses = wanted.split(",") if wanted else None
        if statuses:
            bad = sorted(set(statuses) - set(Job.Status.values))
            if bad:
                raise InvalidInput(
                    f"Unknown status {', '.join(bad)}; use {', '.join(Job.Status.values)}."
                )
        ordering = params.get("ordering") or "-created"
        archived = ARCHIVED_CHOICES.get(params.get("archived", "false").lower(), "bad")
        if archived == "bad":
            raise InvalidInput(
                f"Unknown archived={params.get('archived')!r}; use false (the default), true "
                "or any.",
                details={"archived": params.get("archived")},
            )
        if ordering.lstrip("-") not in selectors.JOB_ORDERINGS:
            raise InvalidInput(
                f"Unknown ordering {ordering!r}; use one of "
                f"{', '.join(selectors.JOB_ORDERINGS)}, with a leading '-' to reverse.",
                details={"ordering": ordering},
            )
        qs = selectors.jobs_search(
            user=request.user,
            text=params.get("q", "").strip()[:200],
            statuses=statuses,
            owner=params.get("owner", "").strip()[:150],
            node=params.get("node", "").strip()[:200],
            ordering=ordering,
            archived=archived,  # type: ignore[arg-type]
        )
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        context = {"step_times": step_times_of(page), "worker_timings": worker_timings_of(page)}
        return paginator.get_paginated_response(
            JobOutputSerializer(page, many=True, context=context).data
        )

    @extend_schema(
        request={
            "application/json": InputSerializer,
            "multipart/form-data": {
                "type": "object",
                "properties": {
                    "job": {"type": "string", "description": "the job as JSON (as above)"},
                    "bundle": {
                        "type": "string",
                        "format": "binary",
                        "description": "the code bundle (gzip'd tar) the workers run in",
                    },
                },
            },
        },
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                location=OpenApiParameter.HEADER,
                required=False,
                description="a key of your choice (e.g. a UUID): retrying with the same key and "
                "body returns the job made the first time (200, Idempotent-Replayed: true); the "
                "same key with another body is a 422",
            )
        ],
        responses={
            201: JobOutputSerializer,
            200: JobOutputSerializer,
            422: ERRORS[400],
            **UPLOAD_ERRORS,
        },
    )
    def post(self, request):
        body = request.data
        if request.content_type.startswith("multipart/form-data"):
            body = _multipart_job(request)
        data = self.InputSerializer(data=body)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        policy = None
        if v.get("policy") is not None:
            policy = (
                policy_selectors.policies_visible_to(request.user).filter(id=v["policy"]).first()
            )
            if policy is None:
                raise InvalidInput(
                    f"Policy {v['policy']} does not exist or is not yours.",
                    details={"policy": v["policy"]},
                )
        workers = v["workers"]
        key = _idempotency_key(request)
        spec = dict(
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
            bundle_digest=v.get("bundle") or "",
            labels=v["labels"],
        )
        if key is None:
            job = job_services.job_create(owner=request.user, **spec)
            return Response(JobOutputSerializer(job).data, status=status.HTTP_201_CREATED)
        job, created = job_services.job_create_idempotent(
            owner=request.user,
            idempotency_key=key,
            fingerprint=_fingerprint(body),
            **spec,
        )
        response = Response(
            JobOutputSerializer(job).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
        if not created:
            response["Idempotent-Replayed"] = "true"
        return response


IDEMPOTENCY_KEY_MAX = 100


def _idempotency_key(request) -> str | None:
    """The request's Idempotency-Key header (None: none), checked for form."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise InvalidInput(
            f"The Idempotency-Key header must be 1 to {IDEMPOTENCY_KEY_MAX} printable "
            f"characters (a UUID is a good choice).",
            details={"idempotency_key": key[:IDEMPOTENCY_KEY_MAX]},
        )
    return key


def _fingerprint(body: Any) -> str:
    """The sha256 of a request body, independent of key order and whitespace."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _multipart_job(request) -> dict:
    """A job submitted as a form: the field ``job`` holds its JSON, the file ``bundle`` its
    code, stored first (content-addressed: the same code is stored once)."""
    raw = request.data.get("job")
    try:
        body = json.loads(raw) if isinstance(raw, str) else None
    except ValueError as exc:
        raise InvalidInput(f"The form field 'job' is not JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise InvalidInput("Send the job's JSON in the form field 'job'.", details={"job": raw})
    upload = request.data.get("bundle")
    if upload is not None and not isinstance(upload, str):
        bundle, _ = bundle_services.bundle_store(user=request.user, data=upload.read())
        body["bundle"] = bundle.digest
    return body


class JobDetailApi(APIView):
    class PatchSerializer(serializers.Serializer):
        labels = serializers.JSONField(help_text=LABELS_HELP + "; replaces the job's labels")

    class DeletedSerializer(serializers.Serializer):
        deleted = serializers.IntegerField(help_text="the deleted job's id")
        removed = serializers.DictField(
            child=serializers.IntegerField(),
            help_text="what went with it: runs, events, metric_points, log_lines",
        )

    @extend_schema(responses={200: JobOutputSerializer, **ERRORS})
    def get(self, request, job_id: int):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        return Response(JobOutputSerializer(job).data)

    @extend_schema(request=PatchSerializer, responses={200: JobOutputSerializer, **ERRORS})
    def patch(self, request, job_id: int):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        data = self.PatchSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        housekeeping.job_labels_set(
            job=job, labels=data.validated_data["labels"], actor=f"user:{request.user.username}"
        )
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        return Response(JobOutputSerializer(job).data)

    @extend_schema(request=None, responses={200: DeletedSerializer, 409: ERRORS[400], **ERRORS})
    def delete(self, request, job_id: int):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        record = housekeeping.job_delete(job=job, actor=f"user:{request.user.username}")
        return Response({"deleted": record.job_id, "removed": record.removed})


class JobArchiveApi(APIView):
    """POST archives an ended job (hidden from the default jobs list); DELETE brings it back."""

    @extend_schema(request=None, responses={200: JobOutputSerializer, 409: ERRORS[400], **ERRORS})
    def post(self, request, job_id: int):
        return self._set(request, job_id, archived=True)

    @extend_schema(request=None, responses={200: JobOutputSerializer, **ERRORS})
    def delete(self, request, job_id: int):
        return self._set(request, job_id, archived=False)

    def _set(self, request, job_id: int, *, archived: bool):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        housekeeping.job_archive(job=job, actor=f"user:{request.user.username}", archived=archived)
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        return Response(JobOutputSerializer(job).data)


class JobCancelApi(APIView):
    @extend_schema(request=None, responses={200: JobOutputSerializer, 409: ERRORS[400], **ERRORS})
    def post(self, request, job_id: int):
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        job_services.job_cancel(job=job, actor=f"user:{request.user.username}")
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
        return Response(JobOutputSerializer(job).data)


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
