"""URL map: the REST API under /api/v1/, the agent endpoints, the browser UI, admin."""

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

import controlplane.schema  # noqa: F401  (registers the OpenAPI auth schemes)
from controlplane.accounts import apis as account_apis
from controlplane.api import VocabularyApi
from controlplane.bundles import apis as bundle_apis
from controlplane.jobs.apis import agents as agent_apis
from controlplane.jobs.apis import jobs as job_apis
from controlplane.jobs.apis import nodes as node_apis
from controlplane.jobs.apis import runs as run_apis
from controlplane.logs import apis as log_apis
from controlplane.metrics import apis as metric_apis
from controlplane.metrics.prometheus import metrics_view
from controlplane.policies import apis as policy_apis
from controlplane.slurm import apis as slurm_apis

api_v1 = [
    path("jobs/", job_apis.JobListCreateApi.as_view(), name="job-list"),
    path("jobs/<int:job_id>/", job_apis.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<int:job_id>/cancel/", job_apis.JobCancelApi.as_view(), name="job-cancel"),
    path("jobs/<int:job_id>/archive/", job_apis.JobArchiveApi.as_view(), name="job-archive"),
    path("jobs/<int:job_id>/restart/", run_apis.JobRestartApi.as_view(), name="job-restart"),
    path("jobs/<int:job_id>/runs/", run_apis.JobRunListApi.as_view(), name="job-runs"),
    path("jobs/<int:job_id>/commands/", run_apis.JobCommandsApi.as_view(), name="job-commands"),
    path("jobs/<int:job_id>/metrics/", metric_apis.JobMetricsApi.as_view(), name="job-metrics"),
    path(
        "jobs/<int:job_id>/metrics.csv",
        metric_apis.JobMetricsCsvApi.as_view(),
        name="job-metrics-csv",
    ),
    path("jobs/<int:job_id>/events/", job_apis.JobEventsApi.as_view(), name="job-events"),
    path("nodes/", node_apis.NodeListApi.as_view(), name="node-list"),
    path("slurm/allocations/", slurm_apis.AllocationListApi.as_view(), name="slurm-allocations"),
    path(
        "slurm/allocations/<int:allocation_id>/",
        slurm_apis.AllocationDetailApi.as_view(),
        name="slurm-allocation",
    ),
    path(
        "slurm/allocations/<int:allocation_id>/release/",
        slurm_apis.AllocationReleaseApi.as_view(),
        name="slurm-allocation-release",
    ),
    path("nodes/<int:node_id>/", node_apis.NodeDetailApi.as_view(), name="node-detail"),
    path("nodes/<int:node_id>/drain/", node_apis.NodeDrainApi.as_view(), name="node-drain"),
    path("nodes/<int:node_id>/resume/", node_apis.NodeResumeApi.as_view(), name="node-resume"),
    path("nodes/<int:node_id>/revoke/", node_apis.NodeRevokeApi.as_view(), name="node-revoke"),
    path("join-tokens/", node_apis.JoinTokenListCreateApi.as_view(), name="join-token-list"),
    path(
        "join-tokens/<int:token_id>/",
        node_apis.JoinTokenDetailApi.as_view(),
        name="join-token-detail",
    ),
    path("jobs/<int:job_id>/logs/", log_apis.JobLogsApi.as_view(), name="job-logs"),
    path("vocabulary/", VocabularyApi.as_view(), name="vocabulary"),
    path("bundles/", bundle_apis.BundleUploadApi.as_view(), name="bundle-upload"),
    path("bundles/<str:digest>/", bundle_apis.BundleDetailApi.as_view(), name="bundle-detail"),
    path("tokens/", account_apis.TokenListCreateApi.as_view(), name="token-list"),
    path("tokens/<int:token_id>/", account_apis.TokenDetailApi.as_view(), name="token-detail"),
    path("policies/", policy_apis.PolicyListCreateApi.as_view(), name="policy-list"),
    path("policies/validate/", policy_apis.PolicyValidateApi.as_view(), name="policy-validate"),
    path(
        "policies/templates/", policy_apis.PolicyTemplateListApi.as_view(), name="policy-templates"
    ),
    path(
        "policies/replay/",
        policy_apis.PolicyDefinitionReplayApi.as_view(),
        name="policy-definition-replay",
    ),
    path("policies/<int:policy_id>/", policy_apis.PolicyDetailApi.as_view(), name="policy-detail"),
    path(
        "policies/<int:policy_id>/versions/",
        policy_apis.PolicyVersionListApi.as_view(),
        name="policy-versions",
    ),
    path(
        "policies/<int:policy_id>/replay/",
        policy_apis.PolicyReplayApi.as_view(),
        name="policy-replay",
    ),
    path("jobs/<int:job_id>/policy/", policy_apis.JobPolicyApi.as_view(), name="job-policy"),
    path(
        "jobs/<int:job_id>/decisions/",
        policy_apis.JobDecisionListApi.as_view(),
        name="job-decisions",
    ),
    path(
        "jobs/<int:job_id>/adaptations/",
        policy_apis.JobAdaptationListApi.as_view(),
        name="job-adaptations",
    ),
    path(
        "jobs/<int:job_id>/decisions/<int:decision_id>/approve/",
        policy_apis.DecisionApproveApi.as_view(),
        name="decision-approve",
    ),
    path(
        "jobs/<int:job_id>/decisions/<int:decision_id>/reject/",
        policy_apis.DecisionRejectApi.as_view(),
        name="decision-reject",
    ),
    path("agent/enrol/", agent_apis.AgentEnrolApi.as_view(), name="agent-enrol"),
    path("agent/heartbeat/", agent_apis.AgentHeartbeatApi.as_view(), name="agent-heartbeat"),
    path("agent/goodbye/", agent_apis.AgentGoodbyeApi.as_view(), name="agent-goodbye"),
    path("agent/leave/", agent_apis.AgentLeaveApi.as_view(), name="agent-leave"),
    path("agent/bundles/<str:digest>/", agent_apis.AgentBundleApi.as_view(), name="agent-bundle"),
    path("agent/metrics/", metric_apis.AgentMetricsApi.as_view(), name="agent-metrics"),
    path("agent/logs/", log_apis.AgentLogsApi.as_view(), name="agent-logs"),
    path(
        "agent/jobs/<int:job_id>/report/",
        agent_apis.AgentJobReportApi.as_view(),
        name="agent-job-report",
    ),
    path(
        "agent/jobs/<int:job_id>/workers/",
        agent_apis.AgentJobWorkersApi.as_view(),
        name="agent-job-workers",
    ),
    path(
        "agent/jobs/<int:job_id>/cluster/",
        agent_apis.AgentClusterSpecApi.as_view(),
        name="agent-cluster-spec",
    ),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("metrics", metrics_view, name="prometheus-metrics"),
    path("admin/", admin.site.urls),
    # Any other path under /api/: the JSON 404 (handler404 alone is skipped with DEBUG on).
    # CSRF-exempt: a POST to no endpoint is the 404 too, not the CSRF middleware's HTML 403.
    re_path(r"^api/", csrf_exempt(lambda request: _not_found(request))),
    path("", include("frontend.urls")),
]


def _not_found(request, exception=None):
    """JSON 404s under /api/ (in the error shape), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        from django.http import JsonResponse

        return JsonResponse(
            {"code": "not_found", "message": f"No API endpoint at {request.path}.", "details": {}},
            status=404,
        )
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


handler404 = _not_found
