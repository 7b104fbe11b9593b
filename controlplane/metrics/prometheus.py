"""``GET /metrics``: the control plane's state in Prometheus text format (version 0.0.4).

Gauges are read from PostgreSQL at scrape time (cheap aggregate queries), so every
web process reports the same numbers and nothing is lost across restarts. When
``METRICS_TOKEN`` is set, scrapers must send ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import os
from datetime import timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Sum
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from controlplane.jobs.models import Command, Job, Node
from controlplane.metrics.models import MetricBatch

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
INGEST_WINDOW = timedelta(minutes=1)
LATENCY_WINDOW = timedelta(minutes=15)
QUANTILES = (0.5, 0.95, 0.99)


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def render_metrics() -> str:
    now = timezone.now()
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    jobs = dict(Job.objects.values_list("status").annotate(n=Count("id")))
    family("adaptrain_jobs", "gauge", "Jobs by status.")
    for status in Job.Status.values:
        lines.append(f'adaptrain_jobs{{status="{status}"}} {jobs.get(status, 0)}')

    nodes = dict(Node.objects.enrolled().values_list("status").annotate(n=Count("id")))
    family("adaptrain_nodes", "gauge", "Nodes (agents) by status.")
    for status in Node.Status.values:
        lines.append(f'adaptrain_nodes{{status="{status}"}} {nodes.get(status, 0)}')

    commands = dict(Command.objects.values_list("state").annotate(n=Count("id")))
    family("adaptrain_commands", "gauge", "Commands by delivery state.")
    for state in Command.State.values:
        lines.append(f'adaptrain_commands{{state="{state}"}} {commands.get(state, 0)}')

    latency = ExpressionWrapper(F("finished_at") - F("created_at"), output_field=DurationField())
    durations = sorted(
        d.total_seconds()
        for d in Command.objects.filter(
            state=Command.State.APPLIED,
            finished_at__gte=now - LATENCY_WINDOW,
        )
        .exclude(type=Command.Type.START)
        .annotate(latency=latency)
        .values_list("latency", flat=True)
    )
    family(
        "adaptrain_command_latency_seconds",
        "summary",
        "From a command's creation to its workers applying it, over the last 15 minutes.",
    )
    for q in QUANTILES:
        lines.append(
            f'adaptrain_command_latency_seconds{{quantile="{q}"}} {_quantile(durations, q)}'
        )
    lines.append(f"adaptrain_command_latency_seconds_sum {sum(durations)}")
    lines.append(f"adaptrain_command_latency_seconds_count {len(durations)}")

    recent = (
        MetricBatch.objects.filter(received_at__gte=now - INGEST_WINDOW).aggregate(p=Sum("points"))[
            "p"
        ]
        or 0
    )
    family(
        "adaptrain_ingest_points_per_second",
        "gauge",
        "Metric points stored per second, last minute.",
    )
    lines.append(f"adaptrain_ingest_points_per_second {recent / INGEST_WINDOW.total_seconds()}")
    total = MetricBatch.objects.aggregate(p=Sum("points"))["p"] or 0
    family(
        "adaptrain_ingest_points_total",
        "counter",
        "Metric points stored since the database was created.",
    )
    lines.append(f"adaptrain_ingest_points_total {total}")
    return "\n".join(lines) + "\n"


@require_GET
def metrics_view(request):
    expected = os.environ.get("METRICS_TOKEN", "")
    if expected:
        sent = request.META.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            return HttpResponse(
                "Send 'Authorization: Bearer <METRICS_TOKEN>'.\n",
                status=401,
                content_type="text/plain",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE)
