"""Read-only queries over policies (scoped to what a user may see) and their decisions."""

from __future__ import annotations

from django.db.models import QuerySet

from controlplane.errors import NotFound
from controlplane.jobs.models import Job, Run
from controlplane.policies.models import Decision, Policy, PolicyVersion


def policies_visible_to(user) -> QuerySet[Policy]:
    qs = Policy.objects.select_related("owner")
    return qs if user.is_staff else qs.filter(owner=user)


def policy_get_for_user(*, user, policy_id: int) -> Policy:
    policy = policies_visible_to(user).filter(id=policy_id).first()
    if policy is None:
        raise NotFound(f"Policy {policy_id} does not exist or is not yours.")
    return policy


def job_decisions(job: Job, *, run: Run | None = None) -> QuerySet[Decision]:
    """The job's decisions, oldest first: all of its runs', or only ``run``'s."""
    qs = Decision.objects.filter(job=job).select_related("policy", "run").order_by("id")
    return qs.filter(run=run) if run is not None else qs


def policy_versions(policy: Policy) -> QuerySet[PolicyVersion]:
    """Every version of the policy, newest first, with who saved each."""
    return policy.versions.select_related("created_by")


def job_decision_get(job: Job, *, decision_id: int) -> Decision:
    decision = job.decisions.filter(id=decision_id).first()
    if decision is None:
        raise NotFound(f"Job {job.id} has no decision {decision_id}.")
    return decision
