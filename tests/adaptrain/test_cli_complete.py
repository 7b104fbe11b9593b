"""Every CLI subcommand against a running control plane (pytest-django's live server):
jobs, metrics (tail and CSV export), commands, policies (create from a file, attach,
detach, dry-run), nodes and join tokens (staff), --json on reads, completion, and the
documented exit statuses."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest
from django.utils import timezone

from controlplane.accounts.services import token_create
from controlplane.jobs.models import Job, Node
from controlplane.jobs.services.nodes import join_token_create, node_enrol
from controlplane.metrics.models import MetricPoint
from tests.controlplane.jobs.agent_steps import new_job, start

pytestmark = pytest.mark.django_db(transaction=True)

POLICY = {
    "name": "grow",
    "rules": [
        {
            "name": "double",
            "when": "steps_since_fired >= 10",
            "action": {"type": "set_batch_size", "value": "batch_size * 2"},
            "bounds": {"max": 256},
        }
    ],
}


@pytest.fixture
def cli(live_server, user, tmp_path, django_user_model):
    _, secret = token_create(user=user, name="cli")
    admin = django_user_model.objects.create_user("root", password="x", is_staff=True)
    _, staff_secret = token_create(user=admin, name="cli")

    def run(*args, staff=False, server=None):
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(tmp_path),
            "ADAPTRAIN_SERVER": server or live_server.url,
            "ADAPTRAIN_TOKEN": staff_secret if staff else secret,
        }
        return subprocess.run(
            [sys.executable, "-m", "adaptrain", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


@pytest.fixture
def nodes():
    _, token = join_token_create(label="test", uses=2)
    return [
        node_enrol(join_token=token, name=f"n{i}", address=f"10.0.0.{i}", slots=2, labels={})[0]
        for i in (1, 2)
    ]


@pytest.fixture
def running(user, nodes):
    job = start(new_job(user, steps=100))
    now = timezone.now()
    for step in range(1, 31):
        MetricPoint.objects.create(
            job=job, run=job.current_run, name="loss", step=step, value=1.0 / step, time=now
        )
        MetricPoint.objects.create(
            job=job, run=job.current_run, name="gns", step=step, value=10.0 * step, time=now
        )
    Job.objects.filter(id=job.id).update(last_step=30)
    return Job.objects.get(id=job.id)


def test_jobs_reads_take_json_and_show_says_it_in_words(cli, running):
    listed = cli("jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in json.loads(listed.stdout)["results"]] == [running.id]
    table = cli("jobs", "list", "--status", "running").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "NAME", "OWNER", "STATUS"]
    assert table[1].split()[:4] == [str(running.id), "runs", "alice", "running"]
    shown = cli("jobs", "show", str(running.id))
    assert f"job {running.id} 'runs' (alice): running" in shown.stdout
    assert "worker 0 on" in shown.stdout
    assert cli("jobs", "events", str(running.id), "--json").returncode == 0


def test_metrics_tail_and_csv_export_of_every_point(cli, running, tmp_path):
    tail = cli("metrics", str(running.id), "--names", "loss,gns")
    assert tail.returncode == 0, tail.stderr
    rows = {line.split()[0]: line.split() for line in tail.stdout.splitlines()[2:]}
    assert rows["gns"][1:] == ["job", "30", "300"] and rows["loss"][2] == "30"
    out = tmp_path / "m.csv"
    exported = cli("metrics", str(running.id), "--export", "csv", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    points = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(points) == 60 and "exported 60 point(s)" in exported.stderr
    assert {p["name"] for p in points} == {"loss", "gns"}
    assert sorted(int(p["step"]) for p in points if p["name"] == "loss") == list(range(1, 31))


def test_a_command_then_its_status_and_stop_pause_resume(cli, running):
    issued = cli("command", str(running.id), "set_lr", "0.05", "--idempotency-key", "k1")
    assert issued.returncode == 0, issued.stderr
    again = cli("command", str(running.id), "set_lr", "0.07", "--idempotency-key", "k1")
    assert again.returncode == 1 and "Idempotency-Key 'k1' was used" in again.stderr
    command_id = issued.stdout.split("command ")[1].split()[0]
    status = cli("commands", str(running.id), command_id, "--json")
    [command] = json.loads(status.stdout)
    assert command["action"] == "set_lr" and command["state"] == "pending"
    stopped = cli("jobs", "stop", str(running.id))
    assert stopped.returncode == 0 and "stop issued" in stopped.stdout
    paused = cli("jobs", "pause", str(running.id))
    assert paused.returncode == 1 and "is stopping" in paused.stderr


def test_policies_from_a_file_attached_dry_run_and_detached(cli, running, tmp_path):
    path = tmp_path / "grow.json"
    path.write_text(json.dumps(POLICY))
    assert "valid: rules double" in cli("policies", "validate", str(path)).stdout
    created = cli("policies", "create", str(path), "--json")
    assert created.returncode == 0, created.stderr
    policy = json.loads(created.stdout)["id"]
    listed = cli("policies", "list").stdout
    assert "grow" in listed and "double" in listed
    attached = cli("policies", "attach", str(running.id), str(policy))
    assert attached.returncode == 0, attached.stderr
    assert Job.objects.get(id=running.id).policy_id == policy
    dry = cli("policies", "dry-run", str(policy), "--job", str(running.id))
    assert dry.returncode == 0, dry.stderr
    assert f"replayed on job {running.id} run 1" in dry.stdout
    by_file = cli("policies", "dry-run", str(path), "--job", str(running.id), "--json")
    assert json.loads(by_file.stdout)["job"] == running.id
    assert cli("policies", "detach", str(running.id)).returncode == 0
    assert Job.objects.get(id=running.id).policy_id is None
    assert cli("policies", "disable", str(policy)).returncode == 0
    assert cli("policies", "delete", str(policy)).returncode == 0


def test_nodes_and_join_tokens_for_staff(cli, nodes):
    listed = cli("nodes", "list", "--json", staff=True)
    assert listed.returncode == 0, listed.stderr
    name = json.loads(listed.stdout)[0]["name"]
    drained = cli("nodes", "drain", name, staff=True)
    assert drained.returncode == 0 and "drained" in drained.stdout
    assert Node.objects.get(name=name).draining
    assert cli("nodes", "undrain", name, staff=True).returncode == 0
    made = cli("join-tokens", "create", "--uses", "3", "--label", "fleet", staff=True)
    assert made.returncode == 0 and made.stdout.startswith("join_")
    tokens = cli("join-tokens", "list", staff=True).stdout
    assert "fleet" in tokens
    unknown = cli("nodes", "drain", "no-such-node", staff=True)
    assert unknown.returncode == 1 and "no node named 'no-such-node'" in unknown.stderr


def test_exit_statuses_and_completion(cli):
    assert cli("jobs", "frobnicate").returncode == 2  # bad arguments
    away = cli("jobs", "list", server="http://127.0.0.1:9")
    assert away.returncode == 3 and "cannot reach" in away.stderr
    script = cli("completion", "bash")
    assert script.returncode == 0 and "complete -F _adaptrain adaptrain" in script.stdout
    # The script completes for real in bash: subcommands, then options.
    probe = (
        script.stdout
        + 'COMP_WORDS=(adaptrain jobs l); COMP_CWORD=2; _adaptrain; echo "${COMPREPLY[*]}"\n'
        + 'COMP_WORDS=(adaptrain jobs list --st); COMP_CWORD=3; _adaptrain; echo "${COMPREPLY[*]}"\n'
    )
    done = subprocess.run(["bash"], input=probe, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["list", "--status"]
