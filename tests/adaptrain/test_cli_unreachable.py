"""The CLI says what the job page says about a node that stopped answering: ``nodes list``
gives it as ``unreachable since …``, and ``jobs show`` and ``jobs watch`` name the job's
unreachable nodes ("node n1 unreachable since …") while the job keeps its status."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.jobs.models import Job, Node
from controlplane.jobs.services.commands import command_finish
from controlplane.jobs.services.nodes import nodes_mark_lost
from tests.adaptrain.test_cli import cli  # noqa: F401
from tests.controlplane.conftest import join_token, node_client, placed_job  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def unreachable_job(node_client, placed_job):  # noqa: F811
    """``placed_job`` running on node n1, which then fell silent past the heartbeat timeout."""
    start = placed_job.commands.get(type="start")
    command_finish(node=node_client.node, command_id=start.id, ok=True, step=0)
    reply = node_client.post(
        f"/api/v1/agent/jobs/{placed_job.id}/report/",
        {"status": "running", "workers": [{"rank": 0, "port": 7000}, {"rank": 1, "port": 7001}]},
        format="json",
    )
    assert reply.status_code == 200, reply.content
    Node.objects.filter(id=node_client.node.id).update(
        last_heartbeat=timezone.now() - timedelta(seconds=45)
    )
    nodes_mark_lost(timeout_s=30, grace_s=600)
    node = Node.objects.get(id=node_client.node.id)
    assert node.status == "unreachable"
    return Job.objects.get(id=placed_job.id), node


def test_nodes_list_says_since_when_a_node_is_unreachable(cli, unreachable_job):  # noqa: F811
    _, node = unreachable_job
    listed = cli("nodes", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if " n1 " in f" {line} ")
    assert "unreachable" in row
    assert f"unreachable since {node.unreachable_since.isoformat().replace('+00:00', 'Z')}" in row
    assert "no heartbeat for 30 s" in row


def test_jobs_show_and_watch_name_the_jobs_unreachable_node(cli, unreachable_job):  # noqa: F811
    job, node = unreachable_job
    since = node.unreachable_since.isoformat().replace("+00:00", "Z")
    shown = cli("jobs", "show", str(job.id))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].endswith(": running"), lines[0]  # the job keeps its status
    assert lines[1].strip().startswith(f"node n1 unreachable since {since}"), lines
    # watch prints it on the job's line, as long as the node stays silent.
    watch = subprocess.Popen(
        [sys.executable, "-m", "adaptrain", "jobs", "watch", str(job.id), "--interval", "0.2"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = watch.stdout.readline()
        while first.startswith("  event:"):  # the job's events come first
            first = watch.stdout.readline()
    finally:
        watch.kill()
        watch.communicate()
    assert f"job {job.id} running" in first and first.rstrip().endswith(
        f"; node n1 unreachable since {since}"
    ), first
    # Back online: no longer said.
    Node.objects.filter(id=node.id).update(status="online", unreachable_since=None)
    assert "unreachable" not in cli("jobs", "show", str(job.id)).stdout
