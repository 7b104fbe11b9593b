"""``adaptrain jobs`` label, archive and delete against a running server."""

import json
import os
import subprocess
import sys

import pytest

from controlplane.accounts.services import token_create
from controlplane.jobs.models import Job, JobDeletion

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cli(live_server, user, tmp_path):
    _, secret = token_create(user=user, name="cli")

    def run(*args):
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(tmp_path),
            "ADAPTRAIN_SERVER": live_server.url,
            "ADAPTRAIN_TOKEN": secret,
        }
        return subprocess.run(
            [sys.executable, "-m", "adaptrain", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def create(cli, name: str, *labels: str) -> int:
    flags = [a for label in labels for a in ("--label", label)]
    done = cli("jobs", "create", "--name", name, "--batch-size", "16", "--lr", "0.1", *flags)
    assert done.returncode == 0, done.stderr
    return Job.objects.get(name=name).id


def listed(cli, *args: str) -> list[str]:
    done = cli("jobs", "list", "--json", *args)
    assert done.returncode == 0, done.stderr
    return [j["name"] for j in json.loads(done.stdout)["results"]]


def test_labels_at_creation_edited_and_searched(cli):
    job = create(cli, "labelled", "team=vision", "sweep=lr")
    create(cli, "plain")
    assert Job.objects.get(id=job).labels == {"team": "vision", "sweep": "lr"}
    assert listed(cli, "-q", "team=vision") == ["labelled"]
    done = cli("jobs", "relabel", str(job), "team=nlp", "--remove", "sweep")
    assert done.returncode == 0, done.stderr
    assert f"job {job} labels: team=nlp" in done.stdout
    assert "labels team=nlp" in cli("jobs", "show", str(job)).stdout
    bad = cli("jobs", "create", "--name", "x", "--batch-size", "1", "--lr", "1", "--label", "v")
    assert bad.returncode == 1 and "write it as NAME=VALUE" in bad.stderr


def test_archive_and_delete_an_ended_job_refused_while_it_runs(cli):
    job = create(cli, "done with")
    create(cli, "other")
    Job.objects.filter(id=job).update(status="running")
    refused = cli("jobs", "delete", str(job), "--yes")
    assert refused.returncode == 1
    assert f"Job {job} is running: only an ended job can be deleted" in refused.stderr
    assert cli("jobs", "cancel", str(job)).returncode == 0

    unsure = cli("jobs", "delete", str(job))
    assert unsure.returncode == 1 and "add --yes" in unsure.stderr

    archived = cli("jobs", "archive", str(job))
    assert archived.returncode == 0 and f"job {job} archived" in archived.stdout
    assert listed(cli) == ["other"]
    assert listed(cli, "--archived", "true") == ["done with"]
    assert cli("jobs", "archive", str(job), "--undo").returncode == 0
    assert listed(cli) == ["other", "done with"]

    deleted = cli("jobs", "delete", str(job), "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert f"job {job} deleted (0 runs, " in deleted.stdout
    assert "0 metric points, 0 log lines)" in deleted.stdout
    assert not Job.objects.filter(id=job).exists()
    assert JobDeletion.objects.filter(job_id=job, deleted_by="user:alice").exists()
    assert cli("jobs", "show", str(job)).returncode == 1
