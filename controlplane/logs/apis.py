"""REST endpoints for logs: a job's lines (one run at a time; a page, or the last lines)
and the agents' log batches."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from agent.protocol import vocabulary
from controlplane.api import ERRORS, int_query_param
from controlplane.errors import InvalidInput
from controlplane.jobs import selectors as job_selectors
from controlplane.jobs.auth import AgentApi
from controlplane.logs import selectors, services

MAX_LINES = 10_000


class LogLineSerializer(serializers.Serializer):
    seq = serializers.IntegerField(help_text="the line's number in its run (1, 2, …)")
    rank = serializers.IntegerField(help_text="the worker's number in the run")
    stream = serializers.ChoiceField(choices=list(vocabulary.LOG_STREAMS))
    time = serializers.FloatField(help_text="unix seconds, when the worker's node read it")
    text = serializers.CharField()


class LogsOutputSerializer(serializers.Serializer):
    job = serializers.IntegerField()
    run = serializers.IntegerField(
        allow_null=True, help_text="the run these lines are of (null: the job has no run yet)"
    )
    seq = serializers.IntegerField(
        help_text="the job's live sequence number when this was read (for ?after= on its stream)"
    )
    first_seq = serializers.IntegerField(
        help_text="the run's oldest line kept (older ones went to LOG_MAX_BYTES_PER_RUN)"
    )
    last_seq = serializers.IntegerField(
        help_text="the run's newest line when this was read (0: none yet); every line up to it "
        "that the filters select and the page reaches is in lines"
    )
    trimmed = serializers.IntegerField(help_text="lines of the run removed by the size cap")
    more = serializers.BooleanField(
        help_text="more lines follow the last one given: ask again with since=<its seq>"
    )
    lines = LogLineSerializer(many=True)


def _stream_param(request) -> str | None:
    raw = request.query_params.get("stream") or None
    if raw is not None and raw not in vocabulary.LOG_STREAMS:
        raise InvalidInput(
            f"stream must be one of {', '.join(vocabulary.LOG_STREAMS)}; got {raw!r}.",
            details={"stream": raw, "allowed": list(vocabulary.LOG_STREAMS)},
        )
    return raw


class JobLogsApi(APIView):
    @extend_schema(
        responses={200: LogsOutputSerializer, **ERRORS},
        parameters=[
            OpenApiParameter(
                "run",
                int,
                description=(
                    "the run's number within the job (default: the job's current run). An unknown "
                    "number is a 404 whose details.runs lists the job's runs"
                ),
            ),
            OpenApiParameter(
                "worker", int, description="only this worker's lines (its number in the run)"
            ),
            OpenApiParameter(
                "stream", str, enum=list(vocabulary.LOG_STREAMS), description="only this stream"
            ),
            OpenApiParameter(
                "since",
                int,
                description=(
                    "lines numbered after this one, oldest first, up to limit (page forward with the "
                    "last seq received; default 0: from the start)"
                ),
            ),
            OpenApiParameter(
                "tail",
                int,
                description=f"the last N lines instead (1-{MAX_LINES}); not with since",
            ),
            OpenApiParameter(
                "limit", int, description=f"lines per page with since (1-{MAX_LINES}, default 1000)"
            ),
        ],
    )
    def get(self, request, job_id: int):
        job = job_selectors.job_get_for_user(user=request.user, job_id=job_id)
        since = int_query_param(request, "since", low=0)
        tail = int_query_param(request, "tail", low=1, high=MAX_LINES)
        if since is not None and tail is not None:
            raise InvalidInput(
                "Give since (a page forward) or tail (the last lines), not both.",
                details={"since": since, "tail": tail},
            )
        rank = int_query_param(request, "worker", low=0, high=services.MAX_RANK)
        stream = _stream_param(request)
        limit = int_query_param(request, "limit", default=1000, low=1, high=MAX_LINES)
        run = job_selectors.job_run_get(job, int_query_param(request, "run", low=1))
        job.refresh_from_db(fields=["live_seq"])
        if run is None:  # never placed: nothing written yet
            return Response(
                {
                    "job": job.id,
                    "run": None,
                    "seq": job.live_seq,
                    "first_seq": 1,
                    "last_seq": 0,
                    "trimmed": 0,
                    "more": False,
                    "lines": [],
                }
            )
        # The run's numbers before its lines: every line up to last_seq is then among
        # those read (a run's lines commit in number order).
        summary = selectors.run_log_summary(run.id)
        lines, more = selectors.run_log_lines(
            run_id=run.id, rank=rank, stream=stream, since=since, tail=tail, limit=limit
        )
        return Response(
            {
                "job": job.id,
                "run": run.number,
                "seq": job.live_seq,
                **summary,
                "more": more,
                "lines": lines,
            }
        )


class AgentLogsApi(AgentApi):
    @extend_schema(
        request=inline_serializer(
            "LogBatch",
            {
                "batch_id": serializers.CharField(max_length=64),
                "job": serializers.IntegerField(),
                "lines": serializers.ListField(
                    child=inline_serializer(
                        "LogLineIn",
                        {
                            "rank": serializers.IntegerField(min_value=0),
                            "stream": serializers.ChoiceField(choices=list(vocabulary.LOG_STREAMS)),
                            "time": serializers.FloatField(),
                            "text": serializers.CharField(allow_blank=True),
                        },
                    )
                ),
            },
        ),
        responses={
            200: inline_serializer("LogBatchReply", {"stored": serializers.IntegerField()}),
            201: inline_serializer("LogBatchStored", {"stored": serializers.IntegerField()}),
            413: ERRORS[400],
            **ERRORS,
        },
    )
    def post(self, request):
        stored = services.logs_ingest(node=request.auth, data=request.data)
        return Response(
            {"stored": stored}, status=status.HTTP_201_CREATED if stored else status.HTTP_200_OK
        )
