"""Pages of the browser UI. Data comes from the REST API and the job WebSocket."""

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from controlplane.errors import NotFound
from controlplane.jobs import selectors


@login_required
def job_list(request):
    jobs = selectors.jobs_visible_to(request.user)[:200]
    return render(request, "frontend/job_list.html", {"jobs": jobs})


@login_required
def job_detail(request, job_id: int):
    try:
        job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    except NotFound:
        raise Http404("No such job") from None
    return render(request, "frontend/job_detail.html", {"job": job})
