from django.contrib.auth import views as auth_views
from django.urls import path

from frontend import views

urlpatterns = [
    path("", views.job_list, name="job-list-page"),
    path("jobs/new/", views.job_new, name="job-new-page"),
    path("jobs/compare/", views.job_compare, name="job-compare-page"),
    path("jobs/<int:job_id>/", views.job_detail, name="job-detail-page"),
    path("jobs/<int:job_id>/audit/", views.job_audit, name="job-audit-page"),
    path("policies/", views.policy_list, name="policy-list-page"),
    path("policies/new/", views.policy_edit, name="policy-new-page"),
    path("policies/<int:policy_id>/", views.policy_edit, name="policy-edit-page"),
    path("nodes/", views.node_list, name="node-list-page"),
    path("nodes/add/", views.node_add, name="node-add-page"),
    path("docs/agent-install.md", views.agent_install_doc, name="agent-install-doc"),
    path("tokens/", views.token_list, name="token-list-page"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
