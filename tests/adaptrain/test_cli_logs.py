"""``adaptrain logs``: a job's worker output from a running server (pytest-django's live
server) — merged with each line's rank (stderr lines on stderr, marked), one worker's
plain, the last lines, JSON lines; with -f it prints lines as they are stored and exits
once the job has ended; an error exits 1 with the server's message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from controlplane.accounts.services import token_create
from controlplane.jobs.models import Job
from controlplane.jobs.services.jobs import job_create
from controlplane.jobs.services.nodes import join_token_create, node_enrol
from controlplane.jobs.services.scheduling import job_place
from controlplane.logs import services

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def job(user):
    job = job_create(
        owner=user,
        name="talker",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 8, "lr": 0.1},
        workers_initial=2,
        workers_min=2,
        workers_max=2,
        strategy="ssgd",
        topology="ring",
    )
    node, _ = node_enrol(
        join_token=join_token_create(label="t")[1],
        name="n1",
        address="127.0.0.1",
        slots=2,
        labels={},
    )
    assert job_place(job_id=job.id)
    job.node = node
    return job


def store(job, batch_id, lines):
    body = [
        {"rank": rank, "stream": stream, "time": 1_750_000_000.0 + i, "text": text}
        for i, (rank, stream, text) in enumerate(lines)
    ]
    services.logs_ingest(node=job.node, data={"batch_id": batch_id, "job": job.id, "lines": body})


@pytest.fixture
def cli(live_server, user, tmp_path):
    _, secret = token_create(user=user, name="cli")
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path),
        "ADAPTRAIN_SERVER": live_server.url,
        "ADAPTRAIN_TOKEN": secret,
    }

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "adaptrain", "logs", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    run.popen = lambda *args: subprocess.Popen(  # type: ignore[attr-defined]
        [sys.executable, "-m", "adaptrain", "logs", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return run


LINES = [
    (0, "stdout", "epoch 1"),
    (1, "stdout", "epoch 1 too"),
    (1, "stderr", "Traceback (most recent call last):"),
    (0, "stdout", "epoch 2"),
]


def test_merged_one_worker_tail_and_json(cli, job):
    store(job, "b-1", LINES)
    merged = cli(str(job.id))
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.splitlines() == [
        "[rank 0] epoch 1",
        "[rank 1] epoch 1 too",
        "[rank 0] epoch 2",
    ]
    assert merged.stderr.splitlines() == ["[rank 1!] Traceback (most recent call last):"]
    one = cli(str(job.id), "--worker", "1")
    assert one.stdout.splitlines() == ["epoch 1 too"]
    assert one.stderr.splitlines() == ["Traceback (most recent call last):"]
    tail = cli(str(job.id), "--tail", "1")
    assert tail.stdout.splitlines() == ["[rank 0] epoch 2"] and tail.stderr == ""
    as_json = [
        json.loads(x) for x in cli(str(job.id), "--json", "--stream", "stderr").stdout.splitlines()
    ]
    assert as_json == [
        {"seq": 3, "rank": 1, "stream": "stderr", "time": 1_750_000_002.0, "text": LINES[2][2]}
    ]


def test_follow_prints_new_lines_and_exits_once_the_job_ended(cli, job):
    store(job, "b-1", LINES[:1])
    follower = cli.popen(str(job.id), "-f", "--interval", "0.2")
    time.sleep(1.5)
    store(job, "b-2", LINES[1:2])
    time.sleep(1.0)
    Job.objects.filter(id=job.id).update(status="failed")
    store(job, "b-3", LINES[3:])  # the last node's lines, just after the job ended
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert out.splitlines() == ["[rank 0] epoch 1", "[rank 1] epoch 1 too", "[rank 0] epoch 2"]


def test_errors_exit_1_with_the_servers_message(cli, job):
    missing = cli("999999")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    bad = cli(str(job.id), "--run", "7")
    assert bad.returncode == 1 and "has no run 7" in bad.stderr
