"""Read-only queries over policy decisions."""

from __future__ import annotations

from django.db.models import QuerySet

from controlplane.jobs.models import Job, Run
from controlplane.policies.models import Decision


def job_decisions(job: Job, *, run: Run | None = None) -> QuerySet[Decision]:
    """The job's decisions, oldest first: all of its runs', or only ``run``'s."""
    qs = Decision.objects.filter(job=job).select_related("policy", "run").order_by("id")
    return qs.filter(run=run) if run is not None else qs
