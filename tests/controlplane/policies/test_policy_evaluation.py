"""Evaluating a running job's policy records a decision and issues one command at a time;
applying the command updates the job exactly once."""

import pytest

from controlplane.errors import Conflict, Unprocessable
from controlplane.jobs.models import Command, Event, Job
from controlplane.jobs.services.commands import command_ack, command_finish, command_issue
from controlplane.policies.models import Decision
from controlplane.policies.services import job_policy_evaluate
from tests.controlplane.policies.policy_steps import running_job

pytestmark = pytest.mark.django_db


def test_firing_rule_records_decision_then_command(user, node):
    job = running_job(user, node)
    [decision] = job_policy_evaluate(job_id=job.id)
    decision.refresh_from_db()
    command = decision.command
    assert command.type == "set_batch_size" and command.payload == {"value": 64}
    assert command.issued_by == "policy:p/grow" and command.state == "pending"
    assert decision.inputs["batch_size"] == 32 and decision.step == 150
    kinds = list(
        Event.objects.filter(job=job, kind__in=["decision", "command"]).values_list(
            "kind", flat=True
        )
    )
    assert kinds == ["decision", "command"]


def test_no_new_decision_while_a_command_is_in_flight(user, node):
    job = running_job(user, node)
    job_policy_evaluate(job_id=job.id)
    Job.objects.filter(id=job.id).update(last_step=1000)
    assert job_policy_evaluate(job_id=job.id) == []
    assert Decision.objects.count() == 1


def test_applied_command_updates_the_job_once_and_the_rule_counts_from_it(user, node):
    job = running_job(user, node)
    [decision] = job_policy_evaluate(job_id=job.id)
    command_id = Decision.objects.get(id=decision.id).command_id
    command_ack(node=node, command_id=command_id)
    command_finish(node=node, command_id=command_id, ok=True, step=160)
    command_finish(node=node, command_id=command_id, ok=True, step=999)  # redelivered
    command = Command.objects.get(id=command_id)
    assert command.state == "applied" and command.applied_step == 160
    assert Job.objects.get(id=job.id).batch_size == 64
    # Only 50 steps since the rule fired at step 150: no new decision yet.
    Job.objects.filter(id=job.id).update(last_step=200)
    assert job_policy_evaluate(job_id=job.id) == []
    Job.objects.filter(id=job.id).update(last_step=251)
    [second] = job_policy_evaluate(job_id=job.id)
    assert second.action == {"type": "set_batch_size", "value": 128}


def test_dry_run_records_decisions_without_commands(user, node):
    job = running_job(user, node, dry_run=True)
    [decision] = job_policy_evaluate(job_id=job.id)
    assert decision.outcome == "dry_run" and decision.command is None
    assert not Command.objects.filter(job=job, type="set_batch_size").exists()


def test_failed_command_leaves_the_job_unchanged(user, node):
    job = running_job(user, node)
    [decision] = job_policy_evaluate(job_id=job.id)
    command_id = Decision.objects.get(id=decision.id).command_id
    command_finish(node=node, command_id=command_id, ok=False, error="rank 1: boom")
    assert Command.objects.get(id=command_id).error == "rank 1: boom"
    assert Job.objects.get(id=job.id).batch_size == 32


def test_applied_batch_size_change_records_the_scaled_learning_rate(user, node):
    job = running_job(user, node)
    Job.objects.filter(id=job.id).update(
        hyperparameters={**job.hyperparameters, "lr_scaling": "sqrt"}
    )
    [decision] = job_policy_evaluate(job_id=job.id)
    command_id = Decision.objects.get(id=decision.id).command_id
    # The workers scale their learning rate by the rule and report it with "applied".
    command_finish(node=node, command_id=command_id, ok=True, step=160, lr=0.1 * 2**0.5)
    job.refresh_from_db()
    assert job.batch_size == 64 and job.learning_rate == pytest.approx(0.1 * 2**0.5)


def test_a_batch_size_reply_without_a_learning_rate_leaves_it_as_it_was(user, node):
    # The control plane records the learning rate the workers report; it does not
    # compute one of its own from the job's rule.
    job = running_job(user, node)
    Job.objects.filter(id=job.id).update(
        hyperparameters={**job.hyperparameters, "lr_scaling": "sqrt"}
    )
    [decision] = job_policy_evaluate(job_id=job.id)
    command_id = Decision.objects.get(id=decision.id).command_id
    command_finish(node=node, command_id=command_id, ok=True, step=160)
    job.refresh_from_db()
    assert job.batch_size == 64 and job.learning_rate == pytest.approx(0.1)


def test_action_the_job_cannot_take_is_recorded_as_skipped_with_the_reason(user, node):
    job = running_job(user, node)  # two workers, min = max = 2: not elastic
    policy = job.policy
    policy.definition = {
        "name": "p",
        "rules": [
            {"name": "out", "when": "true", "action": {"type": "scale_workers", "value": "3"}}
        ],
    }
    policy.save()
    [decision] = job_policy_evaluate(job_id=job.id)
    decision.refresh_from_db()
    assert decision.outcome == "skipped" and decision.command is None
    assert "elastic" in decision.decided_by or "workers" in decision.decided_by
    assert not Command.objects.filter(job=job, type="scale_workers").exists()
    event = Event.objects.filter(job=job, kind="decision").last()
    assert "was not carried out" in event.message and event.data["error"]
    assert Job.objects.get(id=job.id).status == "running"


def test_batch_size_change_records_the_learning_rate_the_workers_report(user, node):
    # With lr_scaling "adascale" the gain depends on the workers' noise estimate: the
    # control plane records the value they report with "applied".
    job = running_job(user, node)
    Job.objects.filter(id=job.id).update(
        hyperparameters={**job.hyperparameters, "lr_scaling": "adascale"}
    )
    [decision] = job_policy_evaluate(job_id=job.id)
    command_id = Decision.objects.get(id=decision.id).command_id
    command_finish(node=node, command_id=command_id, ok=True, step=160, lr=0.1734)
    job.refresh_from_db()
    assert job.batch_size == 64 and job.learning_rate == pytest.approx(0.1734)


def test_job_records_the_policy_version_it_runs_with_and_takes_up_an_edit(user, node):
    from controlplane.policies.services import policy_update
    from tests.controlplane.policies.policy_steps import RULE

    job = running_job(user, node)
    assert job.policy_version == 1
    policy_update(
        policy=job.policy,
        definition={"name": "p", "rules": [{**RULE, "bounds": {"max": 256}}]},
        user=user,
    )
    job_policy_evaluate(job_id=job.id)
    job.refresh_from_db()
    assert job.policy_version == 2
    event = Event.objects.filter(job=job, message__contains="version 2").get()
    assert event.data == {"policy": job.policy_id, "policy_version": 2, "previous": 1}
    assert Decision.objects.get(job=job).policy_version == 2


def test_a_stopping_job_gets_no_policy_action_and_takes_no_command(user, node):
    """A stop applied at a step leaves the job running until its workers exit; in that time
    neither a policy nor a user may queue a command its workers would never apply."""
    job = running_job(user, node)
    [stop] = command_issue(job=job, type="stop", issued_by="user:alice")
    command_ack(node=node, command_id=stop.id)
    command_finish(node=node, command_id=stop.id, ok=True, step=150)
    assert Job.objects.get(id=job.id).status == "running"
    Job.objects.filter(id=job.id).update(last_step=1000)
    assert job_policy_evaluate(job_id=job.id) == []
    with pytest.raises(Conflict, match="is stopping"):
        command_issue(job=job, type="set_lr", value=0.2, issued_by="user:alice")
    assert sorted(Command.objects.filter(job=job).values_list("type", flat=True)) == [
        "start",
        "stop",
    ]


def test_a_command_key_reused_for_another_value_is_refused(user, node):
    job = running_job(user, node)
    [first] = command_issue(
        job=job, type="set_lr", value=0.2, issued_by="user:alice", idempotency_key="k"
    )
    [again] = command_issue(
        job=job, type="set_lr", value=0.2, issued_by="user:alice", idempotency_key="k"
    )
    assert again.id == first.id
    with pytest.raises(Unprocessable, match="was used for command"):
        command_issue(
            job=job, type="set_lr", value=0.3, issued_by="user:alice", idempotency_key="k"
        )
    assert Command.objects.filter(job=job, type="set_lr").count() == 1
