"""The agent's log shipping (agent.daemon.logship) against the real endpoint, with real
worker processes: a crashed worker's every line and its traceback are stored once, each
stream in order, before its job is reported; a flood is rate-limited with "N lines dropped" and
its last lines still arrive; a batch posted again after an agent restart is stored once."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time

import pytest

from agent.daemon.client import ControlPlaneClient
from agent.daemon.logship import JobLogs, LogShipper
from agent.daemon.processes import LocalWorker
from controlplane.jobs.services.jobs import job_create
from controlplane.jobs.services.nodes import join_token_create, node_enrol
from controlplane.jobs.services.scheduling import job_place
from controlplane.logs.models import LogLine

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def shipping(live_server, user, tmp_path):
    """A node with a one-worker job placed on it, and the agent's REST client for it."""
    node, credential = node_enrol(
        join_token=join_token_create(label="t")[1],
        name="n1",
        address="127.0.0.1",
        slots=1,
        labels={},
    )
    job = job_create(
        owner=user,
        name="chatty",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 8, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
    )
    assert job_place(job_id=job.id)
    client = ControlPlaneClient(live_server.url, credential)
    return job, client, tmp_path / "state"


def launch(state_dir, script: dict) -> LocalWorker:
    worker = LocalWorker(rank=0, port=0, address="127.0.0.1:0")
    worker.launch(
        job_id=1,
        state_dir=state_dir,
        python=sys.executable,
        entrypoint="tests.support.log_worker",
        grace_s=5,
        env={"LOG_WORKER_SCRIPT": json.dumps(script), "ADAPTRAIN_AGENT_SOCKET": ""},
    )
    return worker


def ship_until_ended(shipper: LogShipper, job_id: int, worker: LocalWorker) -> None:
    async def run() -> None:
        while not worker.gone():
            await shipper.flush({job_id: [worker]})
            await asyncio.sleep(0.05)
        await shipper.finish(job_id, [worker])

    asyncio.run(run())


def stored(job) -> list[tuple[int, str, str]]:
    return list(
        LogLine.objects.filter(run__job=job).order_by("seq").values_list("seq", "stream", "text")
    )


def test_a_crashed_workers_lines_and_traceback_are_stored_once_in_order(shipping):
    job, client, state_dir = shipping
    worker = launch(
        state_dir, {"lines": 300, "rate": 1000, "stderr_every": 10, "raise": "out of data"}
    )
    shipper = LogShipper(client, state_dir, flush_s=0.05, rate=10_000)
    ship_until_ended(shipper, job.id, worker)
    # The agent still lists the job until it reported it: its output is not read again.
    asyncio.run(shipper.flush({job.id: [worker]}))
    lines = stored(job)
    assert [seq for seq, _, _ in lines] == list(range(1, len(lines) + 1))
    printed = [(stream, text) for _, stream, text in lines[:300]]
    expected = [
        ("stderr" if i % 10 == 9 else "stdout", f"line {i} of worker 0") for i in range(300)
    ]
    # Each stream in the order written (the order across the two pipes is the order the
    # keeper read them in: exact only for a worker slower than the keeper).
    for name in ("stdout", "stderr"):
        assert [p for p in printed if p[0] == name] == [e for e in expected if e[0] == name]
    traceback = [(stream, text) for _, stream, text in lines[300:]]
    assert traceback[0] == ("stderr", "Traceback (most recent call last):")
    assert traceback[-1] == ("stderr", "RuntimeError: out of data")
    assert all(stream == "stderr" for stream, _ in traceback)
    assert not (state_dir / "logs" / f"job-{job.id}.shipping.json").exists()


def test_a_flood_is_rate_limited_with_a_note_and_its_last_lines_still_arrive(shipping):
    job, client, state_dir = shipping
    worker = launch(state_dir, {"lines": 5000, "rate": 0})
    shipper = LogShipper(client, state_dir, flush_s=0.05, rate=300)
    ship_until_ended(shipper, job.id, worker)
    texts = [text for _, _, text in stored(job)]
    notes = [t for t in texts if t.startswith("[adaptrain] ")]
    printed = [t for t in texts if t.startswith("line ")]
    assert notes and all(
        " lines dropped: this worker wrote more than 300 lines/s" in t for t in notes
    )
    dropped = sum(int(t.split()[1]) for t in notes)
    assert dropped + len(printed) == 5000
    numbers = [int(t.split()[1]) for t in printed]
    assert numbers == sorted(set(numbers))  # in order, none twice
    assert numbers[-200:] == list(range(4800, 5000))  # the end passes whatever the rate


def test_a_batch_posted_again_after_an_agent_restart_is_stored_once(shipping):
    job, client, state_dir = shipping
    worker = launch(state_dir, {"lines": 20})
    while not worker.keeper_gone():
        time.sleep(0.02)
    path = state_dir / "logs" / f"job-{job.id}.shipping.json"
    logs = JobLogs(job.id, path, rate=1000, read_bytes=1 << 16)
    logs.collect([worker])
    before_post = path.read_bytes()
    asyncio.run(logs.ship(client))
    assert len(stored(job)) == 20 and logs.inflight is None
    # Killed after the control plane stored the batch, before the agent noted it.
    shutil.copyfile(path, path.with_suffix(".sent"))
    path.write_bytes(before_post)
    restarted = JobLogs(job.id, path, rate=1000, read_bytes=1 << 16)
    assert restarted.inflight is not None
    asyncio.run(restarted.ship(client))
    assert restarted.inflight is None and len(stored(job)) == 20
    restarted.collect([worker])
    assert restarted.inflight is None  # read on after that batch: nothing new
