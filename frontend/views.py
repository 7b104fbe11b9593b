"""Pages of the browser UI. Each renders a shell; data comes from the REST API and the
job WebSocket, read by the page's ES module in ``static/frontend/``."""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404
from django.shortcuts import render

from controlplane.errors import NotFound
from controlplane.jobs import selectors
from controlplane.jobs.models import ENTRYPOINTS, Job

# The jobs page's query parameters (FILTERS and "offset" in jobs.js).
JOB_LIST_QUERY = ("q", "status", "owner", "node", "archived", "ordering", "offset")


def _job_or_404(request, job_id: int) -> Job:
    try:
        return selectors.job_get_for_user(user=request.user, job_id=job_id)
    except NotFound:
        raise Http404("No such job") from None


@login_required
def job_list(request):
    # A filtered or paged URL (jobs.js keeps the filters there) is drawn by the script from
    # the API; drawing the unfiltered first page here would flash rows it then removes.
    if any(request.GET.get(k) for k in JOB_LIST_QUERY):
        return render(request, "frontend/job_list.html", {"jobs": None, "nav": "jobs"})
    jobs = selectors.jobs_search(user=request.user)[:50]
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
def job_compare(request):
    return render(request, "frontend/job_compare.html", {"nav": "jobs"})


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
def node_add(request):
    if not request.user.is_staff:
        raise PermissionDenied("Only staff add nodes.")
    return render(request, "frontend/node_add.html", {"nav": "nodes"})


@login_required
def agent_install_doc(request):
    """docs/agent-install.md from the source tree (the page's link to the install story);
    a 404 where the control plane was installed without its docs."""
    path = settings.BASE_DIR / "docs" / "agent-install.md"
    if not path.is_file():
        raise Http404("docs/agent-install.md is not installed with this control plane")
    return FileResponse(path.open("rb"), content_type="text/markdown; charset=utf-8")


@login_required
def token_list(request):
    return render(request, "frontend/token_list.html", {"nav": "tokens"})
