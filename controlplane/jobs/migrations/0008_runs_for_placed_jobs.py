"""Data: every job that has been placed (it has workers or commands) gets run 1, made
from what the job recorded, and its workers, cluster versions and commands join it.
Jobs never placed (still pending, or cancelled while pending) get no run."""

from django.db import migrations
from django.db.models import Min


def forwards(apps, schema_editor):
    Job = apps.get_model("jobs", "Job")
    Run = apps.get_model("jobs", "Run")
    Worker = apps.get_model("jobs", "Worker")
    ClusterVersion = apps.get_model("jobs", "ClusterVersion")
    Command = apps.get_model("jobs", "Command")
    placed = set(Worker.objects.values_list("job_id", flat=True)) | set(
        Command.objects.values_list("job_id", flat=True)
    )
    for job in Job.objects.filter(id__in=placed).order_by("id"):
        sizes = [
            len(members)
            for members in ClusterVersion.objects.filter(job_id=job.id).values_list(
                "members", flat=True
            )
        ]
        first_command = Command.objects.filter(job_id=job.id).aggregate(t=Min("created_at"))["t"]
        resumed_from = job.hyperparameters.get("resume_from") or ""
        run = Run.objects.create(
            job_id=job.id,
            number=1,
            status=job.status,
            status_reason=job.status_reason,
            created_by="scheduler",
            reason="the job's first placement (recorded before runs existed)",
            resumed_from=resumed_from,
            resume_note=(
                "resumes from the checkpoint the job names (hyper-parameter resume_from)"
                if resumed_from
                else "trains from scratch"
            ),
            cluster_version=job.cluster_version,
            workers_min_seen=min(sizes) if sizes else None,
            workers_max_seen=max(sizes) if sizes else None,
            last_step=job.last_step,
            created_at=first_command or job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )
        Job.objects.filter(id=job.id).update(current_run=run)
        Worker.objects.filter(job_id=job.id).update(run=run)
        ClusterVersion.objects.filter(job_id=job.id).update(run=run)
        Command.objects.filter(job_id=job.id).update(run=run)


def backwards(apps, schema_editor):
    # 0007's reversal drops the table and the links; nothing else to undo. Jobs with more
    # than one run cannot go back (worker numbers repeat across runs): 0009 refuses that.
    pass


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0007_runs"),
    ]

    operations = [
        migrations.RunPython(forwards, backwards),
    ]
