"""REST endpoints for metrics: a job's series (one run at a time, downsampled for
charts) and the agents' metric batches."""

from __future__ import annotations

import csv

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api import ERRORS, int_query_param
from controlplane.errors import InvalidInput
from controlplane.jobs import selectors as job_selectors
from controlplane.jobs.auth import AgentApi
from controlplane.metrics import selectors, services
from controlplane.metrics.downsample import DEFAULT_DOWNSAMPLE, DOWNSAMPLE_METHODS


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
        job = job_selectors.job_get_for_user(user=request.user, job_id=job_id)
        names_raw = request.query_params.get("names", "")
        names = [n for n in names_raw.split(",") if n] or None
        run = job_selectors.job_run_get(job, int_query_param(request, "run", low=1))
        if run is None:  # never placed: nothing recorded yet
            job.refresh_from_db(fields=["live_seq"])
            return Response({"job": job.id, "run": None, "seq": job.live_seq, "series": []})
        series = selectors.run_metric_series(
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


CSV_COLUMNS = ("run", "name", "rank", "step", "value", "time")


class _Echo:
    """A file-like object whose write returns the line: csv.writer into a generator."""

    def write(self, value: str) -> str:
        return value


class JobMetricsCsvApi(APIView):
    @extend_schema(
        operation_id="job_metrics_csv",
        responses={
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR,
                description="one row per point: run (number), name, rank (empty for a "
                "whole-job series), step, value, time (ISO 8601 UTC); streamed",
            ),
            **ERRORS,
        },
        parameters=[
            OpenApiParameter(
                "names", str, description="comma-separated metric names (default: all)"
            ),
            OpenApiParameter(
                "run", int, description="only this run's points (default: every run's)"
            ),
        ],
    )
    def get(self, request, job_id: int):
        job = job_selectors.job_get_for_user(user=request.user, job_id=job_id)
        number = int_query_param(request, "run", low=1)
        run = job_selectors.job_run_get(job, number) if number is not None else None
        names = [n for n in request.query_params.get("names", "").split(",") if n] or None
        rows = selectors.job_metric_rows(job_id=job.id, run_id=run.id if run else None, names=names)
        writer = csv.writer(_Echo())

        def lines():
            yield writer.writerow(CSV_COLUMNS)
            for run_number, name, rank, step, value, time in rows:
                yield writer.writerow(
                    [
                        run_number,
                        name,
                        "" if rank is None else rank,
                        step,
                        repr(value),
                        time.isoformat(),
                    ]
                )

        response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="job-{job.id}-metrics.csv"'
        return response


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
        stored = services.metrics_ingest(
            node=request.auth,
            batch_id=request.data.get("batch_id"),
            points=request.data.get("points"),
        )
        return Response(
            {"stored": stored}, status=status.HTTP_201_CREATED if stored else status.HTTP_200_OK
        )
