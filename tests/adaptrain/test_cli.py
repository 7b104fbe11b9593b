"""The CLI drives the REST API of a running server (pytest-django's live server)."""

import json
import os
import subprocess
import sys

import pytest

from controlplane.accounts.models import ApiToken
from controlplane.accounts.services import token_create
from controlplane.jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cli(live_server, user, tmp_path):
    _, secret = token_create(user=user, name="cli")

    def run(*args, token=secret):
        env = {**run.env, "ADAPTRAIN_TOKEN": token}
        return subprocess.run(
            [sys.executable, "-m", "adaptrain", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    # The environment the CLI runs in, for a test that starts it itself (``jobs watch``).
    run.env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path),
        "ADAPTRAIN_SERVER": live_server.url,
        "ADAPTRAIN_TOKEN": secret,
    }
    return run


def test_create_list_show_and_cancel_a_job(cli):
    created = cli(
        "jobs",
        "create",
        "--name",
        "from-cli",
        "--batch-size",
        "16",
        "--lr",
        "0.1",
        "--workers",
        "2",
    )
    assert created.returncode == 0, created.stderr
    job = Job.objects.get(name="from-cli")
    assert f"created job {job.id}" in created.stdout
    listed = cli("jobs", "list")
    assert "from-cli" in listed.stdout and "pending" in listed.stdout
    shown = json.loads(cli("jobs", "show", str(job.id), "--json").stdout)
    assert shown["hyperparameters"]["batch_size"] == 16
    cancelled = cli("jobs", "cancel", str(job.id))
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    watched = cli("jobs", "watch", str(job.id), "--interval", "0.1")
    assert watched.returncode == 4 and "cancelled" in watched.stdout  # did not succeed


def test_api_errors_are_printed_with_their_message_and_exit_1(cli):
    bad = cli("jobs", "create", "--name", "x", "--batch-size", "0", "--lr", "0.1")
    assert bad.returncode == 1
    assert "batch_size must be between 1" in bad.stderr
    running = cli("command", "999", "set_batch_size", "64")
    assert running.returncode == 1 and "does not exist" in running.stderr


def test_tokens_can_be_created_and_revoked(cli, user):
    made = cli("tokens", "create", "laptop", "--expires-in-days", "7")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert cli("jobs", "list", token=secret).returncode == 0
    token_id = ApiToken.objects.get(name="laptop").id
    assert cli("tokens", "revoke", str(token_id)).returncode == 0
    refused = cli("jobs", "list", token=secret)
    assert refused.returncode == 1 and "revoked" in refused.stderr


def test_missing_credentials_say_how_to_log_in(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTRAIN_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "adaptrain", "jobs", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "adaptrain login" in result.stderr


def test_restart_a_cancelled_job_and_list_its_runs(cli, user):
    created = cli("jobs", "create", "--name", "again", "--batch-size", "16", "--lr", "0.1")
    job = Job.objects.get(name="again")
    assert created.returncode == 0
    refused = cli("jobs", "restart", str(job.id))
    assert refused.returncode == 1 and "only a finished job" in refused.stderr
    assert cli("jobs", "cancel", str(job.id)).returncode == 0
    restarted = cli("jobs", "restart", str(job.id), "--from-scratch", "--reason", "try again")
    assert restarted.returncode == 0, restarted.stderr
    assert f"job {job.id}: run 1 pending; trains from scratch, as asked" in restarted.stdout
    listed = cli("jobs", "runs", str(job.id))
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:2] == ["NUMBER", "STATUS"] and row.split()[:2] == ["1", "pending"]
    assert "restarted as run 1 (try again)" in row


@pytest.fixture
def bundle_storage(settings, tmp_path):
    from django.core.files.storage import storages

    settings.STORAGES = {
        **settings.STORAGES,
        "bundles": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "bundles")},
        },
    }
    storages._storages = {}
    yield
    storages._storages = {}


def test_run_packs_uploads_once_and_starts_a_job_on_the_project(
    cli, user, tmp_path, bundle_storage
):
    from django.contrib.auth.models import Permission

    from controlplane.bundles.models import Bundle

    project = tmp_path / "my_project"
    (project / "data").mkdir(parents=True)
    (project / "train.py").write_text("def main():\n    print('training')\n")
    (project / "data" / "big.npy").write_bytes(b"\0" * 10_000)
    (project / ".gitignore").write_text("data/\n")
    args = ["run", str(project), "--entrypoint", "train:main", "--workers", "2"]
    refused = cli(*args, "--batch-size", "32", "--lr", "0.05")
    assert refused.returncode == 1 and "may not submit code bundles" in refused.stderr
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="bundles", codename="submit_bundle")
    )
    first = cli(*args, "--batch-size", "32", "--lr", "0.05", "--steps", "100")
    assert first.returncode == 0, first.stderr
    assert "packed 2 file(s)" in first.stderr and "uploaded" in first.stderr
    job = Job.objects.get()
    assert f"created job {job.id} (pending)" in first.stdout and f"/jobs/{job.id}/" in first.stdout
    assert job.name == "my_project" and job.entrypoint == "train:main"
    assert job.bundle_digest == Bundle.objects.get().digest and job.workers_initial == 2
    second = cli(*args, "--batch-size", "32", "--lr", "0.05", "--name", "again", "--json")
    assert second.returncode == 0, second.stderr
    assert "nothing to upload" in second.stderr and Bundle.objects.count() == 1
    assert json.loads(second.stdout)["bundle"] == job.bundle_digest


def test_run_refuses_an_oversized_project_naming_its_biggest_file(cli, tmp_path):
    project = tmp_path / "big"
    project.mkdir()
    (project / "train.py").write_text("")
    (project / "weights.bin").write_bytes(b"\1" * 300_000)
    done = cli("run", str(project), "--entrypoint", "train", "--max-size-mb", "0.1")
    assert done.returncode == 1
    assert "weights.bin (293.0 KiB)" in done.stderr and ".adaptrainignore" in done.stderr
    assert Job.objects.count() == 0


def test_a_policy_is_attached_by_id_by_name_or_made_once_from_a_template(cli):
    def create(name: str, policy: str):
        args = ["jobs", "create", "--name", name, "--batch-size", "16", "--lr", "0.1"]
        return cli(*args, "--policy", policy)

    made = create("from-template", "gns-adaptive-batch")
    assert made.returncode == 0, made.stderr
    assert "from template gns-adaptive-batch" in made.stderr
    policy = Job.objects.get(name="from-template").policy
    assert policy is not None and policy.name == "GNS-driven adaptive batch size"
    again = create("template-again", "gns-adaptive-batch")  # the same policy, not a copy
    assert again.returncode == 0 and "created policy" not in again.stderr
    by_name = create("by-name", "GNS-driven adaptive batch size")
    by_id = create("by-id", str(policy.id))
    assert by_name.returncode == 0 and by_id.returncode == 0, (by_name.stderr, by_id.stderr)
    assert {j.policy_id for j in Job.objects.all()} == {policy.id}
    unknown = create("unknown", "no-such-policy")
    assert unknown.returncode == 1
    assert "no policy is named 'no-such-policy'" in unknown.stderr
    assert "gns-adaptive-batch" in unknown.stderr  # the templates it could have meant
