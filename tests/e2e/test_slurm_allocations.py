"""Agents on a real one-machine Slurm (devtools/slurm_cluster.py: munged, slurmctld and
slurmd from Debian's packages): ``adaptrain slurm up`` submits a batch job whose agent
enrols labelled with its Slurm job; an elastic job of the stand-in workers
(tests/support/elastic_fake_worker.py) grows onto a second allocation, and cancelling the
first (``adaptrain slurm down``: Slurm's SIGTERM to the step) shrinks it off that node
before its agent goes — no worker fails, no command is left in flight."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.slurm_cluster import SlurmCluster, SlurmUnavailable, unavailable_reason
from tests.e2e.conftest import _stack, wait_for, wait_for_job

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FAKE_WORKER = ROOT / "tests" / "support" / "elastic_fake_worker.py"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=8, kill_wait_s=30)
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        cluster.stop()
        pytest.fail(f"the one-machine Slurm did not start: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def slurm_stack(tmp_path_factory, slurm):
    """The stack with no agent of its own; its control plane submits to ``slurm``, whose
    agents run the stand-in workers with two slots each."""
    fake_dir = tmp_path_factory.mktemp("slurm-fake-workers")
    python = fake_dir / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_WORKER}"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    state_root = tmp_path_factory.mktemp("slurm-agents")
    agent_env = {
        "AGENT_PYTHON": str(python),
        "FAKE_WORKER_DIR": str(fake_dir),
        "AGENT_HEARTBEAT_S": "1",
        "AGENT_SLOTS": "2",
        "AGENT_LEAVE_TIMEOUT_S": "20",
        "ADAPTRAIN_SLURM_STATE_ROOT": str(state_root),
        "PYTHONPATH": str(ROOT),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            **slurm.env,
            "SLURM_ENABLED": "true",
            "SLURM_BIN_DIR": slurm.bin_dir(),
            "SLURM_AGENT_PYTHON": sys.executable,
            "SLURM_AGENT_ENV": " ".join(f"{k}={v}" for k, v in agent_env.items()),
            "SLURM_OUTPUT": str(state_root / "slurm-%j.out"),
            "SLURM_SYNC_INTERVAL_S": "1",
            "AUTO_GROW_DELAY_S": "3600",  # the test grows the job itself
        }.items():
            mp.setenv(name, value)
        for stack in _stack(tmp_path_factory, suffix="slurm", agents=0, slots=2):
            stack.slurm = slurm
            stack.state_root = state_root
            yield stack


def cli(stack, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "adaptrain", "--server", stack.url, "--token", stack.token, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"adaptrain {' '.join(args)}: {done.stderr}{done.stdout}"
    return done.stdout


def _up(stack) -> dict:
    allocation = json.loads(cli(stack, "slurm", "up", "--nodes", "1", "--wait", "--json"))
    assert allocation["status"] in ("pending", "running"), allocation
    assert len(allocation["node_names"]) == 1
    return allocation


def _node(stack, name: str) -> dict:
    return next(n for n in stack.api.get("/api/v1/nodes/")[1] if n["name"] == name)


def _members(job) -> list[str]:
    ranked = sorted(
        (w for w in job["workers"] if w["cluster_rank"] is not None),
        key=lambda w: w["cluster_rank"],
    )
    return [w["node"] for w in ranked]


def test_an_elastic_job_grows_onto_a_second_allocation_and_shrinks_off_a_cancelled_one(
    slurm_stack,
):
    stack, api = slurm_stack, slurm_stack.api
    first = _up(stack)
    a = first["node_names"][0]
    node = _node(stack, a)
    assert node["status"] == "online"
    assert node["labels"]["slurm_job"] == first["slurm_job_id"]
    assert node["labels"]["slurm_partition"] == "debug"
    assert node["labels"]["slurm_allocation"] == str(first["id"])
    assert a == f"slurm-{first['slurm_job_id']}-{stack.slurm.node}"

    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "on-slurm",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 10_000_000},
            "workers": {"initial": 2, "min": 1, "max": 4},
        },
    )
    assert status == 201, job
    job_id = job["id"]
    job = wait_for_job(
        api,
        job_id,
        lambda j: (
            j["status"] == "running"
            and len(j["workers"]) == 2
            and all(w["state"] == "running" for w in j["workers"])
            and j
        ),
        timeout_s=60,
        what="the job to run on the first allocation",
        stack=stack,
    )
    assert _members(job) == [a, a]

    # A second allocation: the job grows onto it.
    second = _up(stack)
    b = second["node_names"][0]
    assert b != a and second["slurm_job_id"] != first["slurm_job_id"]
    status, commands = api.post(
        f"/api/v1/jobs/{job_id}/commands/", {"action": "scale_workers", "value": 4}
    )
    assert status == 201, commands
    job = wait_for_job(
        api,
        job_id,
        lambda j: j["status"] == "running" and j["cluster_version"] == 2 and j,
        timeout_s=60,
        what="the job to grow onto the second allocation",
        stack=stack,
    )
    assert sorted(_members(job)) == [a, a, b, b]
    step_before = job["progress"]["step"]

    # Cancel the first: Slurm's SIGTERM has its agent shrink the job off it, then leave.
    out = cli(stack, "slurm", "down", str(first["id"]))
    assert f"Slurm job {first['slurm_job_id']} cancelled" in out
    job = wait_for_job(
        api,
        job_id,
        lambda j: j["status"] == "running" and j["cluster_version"] == 3 and j,
        timeout_s=60,
        what="the job to shrink off the cancelled allocation",
        stack=stack,
    )
    assert _members(job) == [b, b]
    wait_for(
        lambda: _node(stack, a)["status"] == "offline",
        timeout_s=60,
        what=f"node {a} to go offline",
        stack=stack,
    )
    assert _node(stack, a)["draining"] is True
    wait_for(
        lambda: first["slurm_job_id"] not in stack.slurm.queue(),
        timeout_s=60,
        what="Slurm job to end",
        stack=stack,
    )
    wait_for(
        lambda: api.get(f"/api/v1/slurm/allocations/{first['id']}/")[1]["status"] == "ended",
        timeout_s=30,
        what="the allocation to be marked ended",
        stack=stack,
    )

    # Nothing lost: the leavers left (none failed), the job trains on, no command hangs.
    job = wait_for_job(
        api,
        job_id,
        lambda j: j["progress"]["step"] > step_before + 10 and j,
        timeout_s=30,
        what="the job to train on",
        stack=stack,
    )
    assert job["status"] == "running"
    states = {w["node"] + f"#{w['rank']}": w["state"] for w in job["workers"]}
    assert not [k for k, s in states.items() if s == "failed"], states
    assert sorted(s for k, s in states.items() if k.startswith(a)) == ["left", "left"], states
    commands = api.get(f"/api/v1/jobs/{job_id}/commands/")[1]
    assert all(c["state"] == "applied" for c in commands), commands
    events = api.get(f"/api/v1/jobs/{job_id}/events/")[1]
    shrink = [e for e in events if e["data"].get("cluster_version") == 3][0]
    assert shrink["actor"] == f"node:{a}" and "leave" in shrink["message"]

    status, _ = api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
    cli(stack, "slurm", "down", str(second["id"]))


def test_slurm_up_refusals_say_why(slurm_stack):
    stack = slurm_stack
    status, body = stack.api.post("/api/v1/slurm/allocations/", {"nodes": 1, "gres": "gpu 2"})
    assert status == 400 and "gres" in body["details"], body
    status, body = stack.api.post(
        "/api/v1/slurm/allocations/", {"nodes": 1, "partition": "no-such-partition"}
    )
    assert status == 502 and "invalid partition" in body["message"].lower(), body
    status, body = stack.api.post("/api/v1/slurm/allocations/999999/release/", {})
    assert status == 404, body
