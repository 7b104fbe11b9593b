"""Migration 0008: jobs placed before runs existed get run 1 (from what the job recorded),
and their workers, cluster versions and commands join it; a job never placed gets none."""

import pytest
from django.utils import timezone

from tests.controlplane.migrations import migrate, migrate_to_latest

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("jobs", "0006_job_policy_version")]
AFTER = [("jobs", "0009_runs_required")]


def test_existing_placed_jobs_get_run_1_with_their_workers_versions_and_commands():
    apps = migrate(BEFORE)
    try:
        User = apps.get_model("auth", "User")
        Job, Node = apps.get_model("jobs", "Job"), apps.get_model("jobs", "Node")
        Worker, Command = apps.get_model("jobs", "Worker"), apps.get_model("jobs", "Command")
        ClusterVersion = apps.get_model("jobs", "ClusterVersion")
        owner = User.objects.create(username="old-timer")
        node = Node.objects.create(name="n1", address="10.0.0.1", slots=4, credential_hash="x" * 64)
        started = timezone.now()
        common = {
            "owner": owner,
            "entrypoint": "examples.digits",
            "batch_size": 32,
            "learning_rate": 0.1,
        }
        placed = Job.objects.create(
            name="placed",
            status="failed",
            status_reason="worker 1 died",
            hyperparameters={"batch_size": 32, "lr": 0.1, "resume_from": "/c/step-5"},
            cluster_version=2,
            last_step=77,
            started_at=started,
            finished_at=started,
            workers_initial=2,
            workers_min=1,
            workers_max=2,
            **common,
        )
        never = Job.objects.create(
            name="never placed",
            status="cancelled",
            hyperparameters={"batch_size": 32, "lr": 0.1},
            **common,
        )
        for rank in (0, 1):
            Worker.objects.create(job=placed, node=node, rank=rank, port=7000 + rank)
        ClusterVersion.objects.create(
            job=placed,
            version=1,
            members=["a:1", "a:2"],
            workers=[0, 1],
            actor="scheduler",
            reason="registered",
        )
        ClusterVersion.objects.create(
            job=placed,
            version=2,
            members=["a:1"],
            workers=[0],
            actor="scheduler",
            reason="worker 1 died",
        )
        Command.objects.create(job=placed, node=node, seq=1, type="start", issued_by="scheduler")

        apps = migrate(AFTER)
        Job, Run = apps.get_model("jobs", "Job"), apps.get_model("jobs", "Run")
        Worker, Command = apps.get_model("jobs", "Worker"), apps.get_model("jobs", "Command")
        ClusterVersion = apps.get_model("jobs", "ClusterVersion")
        run = Run.objects.get(job_id=placed.id)
        assert (run.number, run.status, run.status_reason, run.created_by) == (
            1,
            "failed",
            "worker 1 died",
            "scheduler",
        )
        assert (run.cluster_version, run.workers_min_seen, run.workers_max_seen, run.last_step) == (
            2,
            1,
            2,
            77,
        )
        assert run.started_at == started and run.finished_at == started
        assert run.resumed_from == "/c/step-5"
        assert Job.objects.get(id=placed.id).current_run_id == run.id
        assert set(Worker.objects.filter(job_id=placed.id).values_list("run_id", flat=True)) == {
            run.id
        }
        assert set(
            ClusterVersion.objects.filter(job_id=placed.id).values_list("run_id", flat=True)
        ) == {run.id}
        assert Command.objects.get(job_id=placed.id).run_id == run.id
        assert not Run.objects.filter(job_id=never.id).exists()
        assert Job.objects.get(id=never.id).current_run_id is None
    finally:
        # Leave the schema as the other tests expect it (every app at its latest migration,
        # not at 0009: later migrations exist), however this one ends.
        migrate_to_latest()
