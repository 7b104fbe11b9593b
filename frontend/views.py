"""Pages of the browser UI. Each renders a shell; data comes from the REST API and the
job WebSocket, read by the page's ES module in ``static/frontend/``."""

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from controlplane.errors import NotFound
from controlplane.jobs import selectors
from controlplane.jobs.models import ENTRYPOINTS, Job


def _job_or_404(request, job_id: int) -> Job:
    try:
        return selectors.job_get_for_user(user=request.user, job_id=job_id)
    except NotFound:
        raise Http404("No such job") from None


@login_required
def job_list(request):
    jobs = selectors.jobs_visible_to(request.user)[:50]
    return render(request, "frontend/job_list.html", {"jobs": jobs, "nav": "jobs"})


@login_required
def job_new(request):
    return render(
        request,
        "frontend/job_new.html",
        {
            "nav": "jobs",
            "strategies": Job.Strategy.values,
            "topologies": Job.Topology.values,
            "examples": sorted(ENTRYPOINTS.items()),
        },
    )


@login_required
def job_detail(request, job_id: int):
    return render(
        request,
        "frontend/job_detail.html",
        {
            "job": _job_or_404(request, job_id),
            "nav": "jobs",
            "strategies": Job.Strategy.values,
            "topologies": Job.Topology.values,
            "examples": sorted(ENTRYPOINTS.items()),
        },
    )


@login_required
def job_audit(request, job_id: int):
    return render(
        request, "frontend/job_audit.html", {"job": _job_or_404(request, job_id), "nav": "jobs"}
    )


@login_required
def policy_list(request):
    return render(request, "frontend/policy_list.html", {"nav": "policies"})


@login_required
def policy_edit(request, policy_id: int | None = None):
    return render(
        request, "frontend/policy_edit.html", {"policy_id": policy_id or "", "nav": "policies"}
    )


@login_required
def node_list(request):
    return render(request, "frontend/node_list.html", {"nav": "nodes"})


@login_required
def token_list(request):
    return render(request, "frontend/token_list.html", {"nav": "tokens"})
