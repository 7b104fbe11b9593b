"""Elastic membership through the real agents and control plane: two agents with two
slots each, workers played by a protocol-speaking stand-in (tests/support/elastic_fake_worker.py) in
place of TensorFlow. One job grows by warm standbys onto the second node, shrinks,
survives a worker crash, shrinks off a node entirely, and fails only when a crash would
take it below its minimum."""

from __future__ import annotations

import json
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import _stack, process_alive, wait_for, wait_for_job

pytestmark = pytest.mark.e2e

FAKE_WORKER = Path(__file__).resolve().parents[1] / "support" / "elastic_fake_worker.py"


def fake_worker_stack(tmp_path_factory, *, suffix: str, env: dict[str, str]):
    """Two agents with two slots each whose workers are the stand-in (no TensorFlow), with
    ``env`` for the whole stack; yields it with ``fake_dir`` (the crash-file folder)."""
    fake_dir = tmp_path_factory.mktemp("fake-workers")
    python = fake_dir / "python"
    # The agents start "python -m <entrypoint>"; this interpreter runs the stand-in instead.
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_WORKER}"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AGENT_PYTHON": str(python),
            "FAKE_WORKER_DIR": str(fake_dir),
            "AGENT_HEARTBEAT_S": "1",
            **env,
        }.items():
            mp.setenv(name, value)
        for stack in _stack(
            tmp_path_factory, suffix=suffix, agents=2, slots=2, distinct_addresses=True
        ):
            stack.fake_dir = fake_dir
            yield stack


@pytest.fixture(scope="module")
def elastic_stack(tmp_path_factory):
    yield from fake_worker_stack(
        tmp_path_factory,
        suffix="elastic",
        env={
            "AGENT_HEARTBEAT_TIMEOUT_S": "6",  # a killed agent's node is lost within ~16 s
            "NODE_LOST_GRACE_S": "0",  # (lost at once, not only unreachable)
            # The scenarios here shrink jobs on purpose; growing back is test_elastic_self_healing's.
            "AUTO_GROW_DELAY_S": "3600",
        },
    )


def _job(api, job_id):
    status, job = api.get(f"/api/v1/jobs/{job_id}/")
    assert status == 200, job
    return job


def _start_elastic(stack, name: str, *, initial: int) -> dict:
    """Submit an elastic digits job (min 1, max 4) that trains until cancelled; the job once
    every node has started its workers. (The job is ``running`` from the first node's
    report; the scenarios count cluster versions from 1, so they start once every node's
    workers run in it. A crash before that is test_a_worker_that_crashes_at_start_….)"""
    status, job = stack.api.post(
        "/api/v1/jobs/",
        {
            "name": name,
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 10_000_000},
            "workers": {"initial": initial, "min": 1, "max": 4},
        },
    )
    assert status == 201, job
    return wait_for_job(
        stack.api,
        job["id"],
        lambda j: (
            j["status"] == "running"
            and j["workers"]
            and all(w["state"] == "running" for w in j["workers"])
            and j
        ),
        timeout_s=60,
        what="the job to run on every node",
        stack=stack,
    )


def _members(job):
    """(node, worker number) of the latest version's members, by cluster rank."""
    ranked = sorted(
        (w for w in job["workers"] if w["cluster_rank"] is not None),
        key=lambda w: w["cluster_rank"],
    )
    return [(w["node"], w["rank"]) for w in ranked]


def _address(job, rank):
    w = next(w for w in job["workers"] if w["rank"] == rank)
    host = {"node-1": "127.0.0.2", "node-2": "127.0.0.3"}[w["node"]]
    return f"{host}_{w['port']}"


def _scale(stack, job_id, value):
    status, commands = stack.api.post(
        f"/api/v1/jobs/{job_id}/commands/", {"action": "scale_workers", "value": value}
    )
    assert status == 201, commands
    wait_for(
        lambda: all(
            c["state"] == "applied"
            for c in stack.api.get(f"/api/v1/jobs/{job_id}/commands/")[1]
            if c["action"] == "scale_workers"
        ),
        timeout_s=60,
        what=f"scale_workers {value} to be applied",
        stack=stack,
    )
    return wait_for_job(
        stack.api,
        job_id,
        lambda j: j["status"] == "running" and j,
        timeout_s=30,
        what="the job to run again",
        stack=stack,
    )


def test_elastic_job_grows_shrinks_and_survives_a_crash_through_real_agents(elastic_stack):
    stack, api = elastic_stack, elastic_stack.api
    job = _start_elastic(stack, "elastic", initial=2)
    job_id = job["id"]
    a = job["workers"][0]["node"]  # best fit put both on one node; the other is b
    b = {"node-1": "node-2", "node-2": "node-1"}[a]
    assert job["cluster_version"] == 1 and _members(job) == [(a, 0), (a, 1)]

    # Grow: the second node starts two warm standbys; they are let in by version 2.
    job = _scale(stack, job_id, 4)
    assert job["cluster_version"] == 2 and job["parameters"]["workers"] == 4
    assert _members(job) == [(a, 0), (a, 1), (b, 2), (b, 3)]
    assert all(w["state"] == "running" and w["cluster_version"] == 2 for w in job["workers"])

    # Shrink: the highest rank leaves cleanly.
    job = _scale(stack, job_id, 3)
    assert job["cluster_version"] == 3 and _members(job) == [(a, 0), (a, 1), (b, 2)]
    wait_for(
        lambda: {w["rank"]: w["state"] for w in _job(api, job_id)["workers"]}[3] == "left",
        timeout_s=30,
        what="worker 3 to be marked left",
        stack=stack,
    )

    # A crash: the agent keeps the others running, the job goes on without the dead worker.
    (stack.fake_dir / f"crash-{_address(job, 1)}").touch()
    job = wait_for_job(
        api,
        job_id,
        lambda j: j["cluster_version"] == 4 and j["status"] == "running" and j,
        timeout_s=60,
        what="version 4 without the crashed worker",
        stack=stack,
    )
    assert _members(job) == [(a, 0), (b, 2)]
    assert {w["rank"]: w["state"] for w in job["workers"]}[1] == "failed"

    # A command in between counts only the current members.
    status, commands = api.post(
        f"/api/v1/jobs/{job_id}/commands/", {"action": "set_lr", "value": 0.01}
    )
    assert status == 201 and len(commands) == 2
    wait_for(
        lambda: all(
            c["state"] == "applied"
            for c in api.get(f"/api/v1/jobs/{job_id}/commands/")[1]
            if c["action"] == "set_lr"
        ),
        timeout_s=30,
        what="set_lr to be applied",
        stack=stack,
    )

    # Shrink off the second node altogether: its agent has nothing left there, and that is no failure.
    job = _scale(stack, job_id, 1)
    assert _members(job) == [(a, 0)]
    time.sleep(3)  # several heartbeats without the job from the second node
    job = _job(api, job_id)
    assert job["status"] == "running", job["status_reason"]
    assert {w["rank"]: w["state"] for w in job["workers"]}[2] in ("left", "exited")

    # Below the minimum a crash fails the job, with the reason.
    (stack.fake_dir / f"crash-{_address(job, 0)}").touch()
    job = wait_for(
        lambda: (j := _job(api, job_id))["status"] == "failed" and j,
        timeout_s=30,
        what="the job to fail",
        stack=stack,
    )
    assert "exited with code 3" in job["status_reason"]

    status, events = api.get(f"/api/v1/jobs/{job_id}/events/")
    versions = [e for e in events if "cluster_version" in e["data"]]
    assert [e["data"]["cluster_version"] for e in versions] == [1, 2, 3, 4, 5]
    assert versions[1]["actor"] == "user:e2e" and "standby" in versions[1]["message"]
    assert versions[3]["actor"] == f"node:{a}" and "exited with code 3" in versions[3]["message"]


def test_a_worker_that_crashes_at_start_leaves_the_elastic_job_running_without_it(elastic_stack):
    """A worker dies the moment it starts, possibly before the other node has started its
    own: that node starts them in whichever version it finds at its rendezvous (1, or the
    one without the dead worker, written meanwhile), and the job runs on with the three
    others instead of failing to start."""
    stack, api = elastic_stack, elastic_stack.api
    crash = stack.fake_dir / "crash-at-start-rank-3"
    crash.touch()
    try:
        status, job = api.post(
            "/api/v1/jobs/",
            {
                "name": "crash at start",
                "entrypoint": "examples.digits",
                "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 10_000_000},
                "workers": {"initial": 4, "min": 1, "max": 4},
            },
        )
        assert status == 201, job
        job = wait_for_job(
            api,
            job["id"],
            lambda j: (
                (j["status"] == "failed" or j["status"] == "running" and j["cluster_version"] >= 2)
                and j
            ),
            timeout_s=60,
            what="the job to go on without the crashed worker",
            stack=stack,
        )
    finally:
        crash.unlink()
    assert job["status"] == "running", job["status_reason"]
    assert job["cluster_version"] == 2 and sorted(rank for _, rank in _members(job)) == [0, 1, 2]
    assert {w["rank"]: w["state"] for w in job["workers"]} == {
        0: "running",
        1: "running",
        2: "running",
        3: "failed",
    }
    status, commands = api.post(
        f"/api/v1/jobs/{job['id']}/commands/", {"action": "set_lr", "value": 0.01}
    )
    assert status == 201, commands
    wait_for(
        lambda: all(
            c["state"] == "applied"
            for c in api.get(f"/api/v1/jobs/{job['id']}/commands/")[1]
            if c["action"] == "set_lr"
        ),
        timeout_s=30,
        what="set_lr to be applied",
        stack=stack,
    )
    status, body = api.post(f"/api/v1/jobs/{job['id']}/cancel/", {})
    assert status == 200 and body["status"] == "cancelled", body
    wait_for(
        lambda: not any(w["state"] == "running" for w in _job(api, job["id"])["workers"]),
        timeout_s=30,
        what="the workers to stop",
        stack=stack,
    )


def test_scale_workers_refusals_say_why(elastic_stack):
    api = elastic_stack.api
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "fixed",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 10_000_000},
            "workers": {"initial": 1},
        },
    )
    wait_for_job(
        api,
        job["id"],
        lambda j: j["status"] == "running",
        timeout_s=60,
        what="the job to run",
        stack=elastic_stack,
    )
    status, body = api.post(
        f"/api/v1/jobs/{job['id']}/commands/", {"action": "scale_workers", "value": 2}
    )
    assert status == 400 and "not elastic" in body["message"]
    api.post(f"/api/v1/jobs/{job['id']}/cancel/", {})


def test_an_agent_back_after_its_node_was_lost_ends_the_workers_the_job_went_on_without(
    elastic_stack,
):
    # The agent on the joiners' node dies; its workers (own sessions) train on. The node is
    # taken for lost and the elastic job shrinks without them. A new agent re-attaches to
    # them, and its first heartbeat's reply tells it the job no longer counts on them: it
    # ends them, and the job trains on where it is.
    stack, api = elastic_stack, elastic_stack.api
    job_id = _start_elastic(stack, "lost and back", initial=2)["id"]
    job = _scale(stack, job_id, 4)
    b = next(w["node"] for w in job["workers"] if w["rank"] == 2)
    state = json.loads((stack.log_dir / "agents" / b / "jobs" / f"job-{job_id}.json").read_text())
    pids = [w["pid"] for w in state["workers"]]
    assert len(pids) == 2 and all(process_alive(p) for p in pids)

    agent = stack.processes.pop(f"agent-{b}")
    agent.send_signal(signal.SIGKILL)
    agent.wait(timeout=10)
    job = wait_for_job(
        api,
        job_id,
        lambda j: j["cluster_version"] == 3 and j["status"] == "running" and j,
        timeout_s=60,
        what=f"the job to shrink without lost node {b}",
        stack=stack,
    )
    assert len(_members(job)) == 2 and all(node != b for node, _ in _members(job))
    assert all(process_alive(p) for p in pids), (
        "the dead agent's workers should have trained on unseen"
    )

    stack.restart_agent(f"agent-{b}")
    wait_for(
        lambda: not any(process_alive(p) for p in pids),
        timeout_s=30,
        what=f"the agent back on {b} to end the workers the job went on without",
        stack=stack,
    )
    wait_for(
        lambda: (
            next(n for n in api.get("/api/v1/nodes/")[1] if n["name"] == b)["status"] == "online"
        ),
        timeout_s=30,
        what=f"node {b} to be online again",
        stack=stack,
    )
    job = _job(api, job_id)
    assert job["status"] == "running" and job["cluster_version"] == 3, job["status_reason"]
    assert {w["rank"]: w["state"] for w in job["workers"]}[2] == "failed"
    api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
