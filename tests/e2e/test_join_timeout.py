"""A grow whose warm standbys never report is given up on (RESCALE_JOIN_TIMEOUT_S), with
real agents and real TensorFlow members: each agent ends exactly the abandoned standby
processes placed on it — also on a node that runs members of the job, which train on —
and the job's later commands are still applied by every member at one step (the joiner
stop reaches every node of the job, so no node's command sequence has a gap).

Node 1 has 3 slots, node 2 one: the job's 2 initial workers go on node 1; a grow to 4
puts one joiner on each node. Joiners are started through a wrapper interpreter that,
while ``$HANG_DIR/hang`` exists, records its pid and sleeps instead of starting.
"""

from __future__ import annotations

import stat
import sys

import pytest

from tests.e2e.conftest import _stack, process_alive, wait_for, wait_for_job

pytestmark = pytest.mark.e2e

JOIN_TIMEOUT_S = 6


@pytest.fixture(scope="module")
def hang_stack(tmp_path_factory):
    hang_dir = tmp_path_factory.mktemp("hang")
    python = hang_dir / "python"
    python.write_text(
        "#!/bin/sh\n"
        f'if [ "$ADAPTRAIN_JOINING" = 1 ] && [ -e "{hang_dir}/hang" ]; then\n'
        f'  echo $$ > "{hang_dir}/joiner-$$"\n'
        "  exec sleep 100000\n"
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGENT_PYTHON", str(python))
        mp.setenv("RESCALE_JOIN_TIMEOUT_S", str(JOIN_TIMEOUT_S))
        mp.setenv("AUTO_GROW_DELAY_S", "3600")  # no retry of the abandoned grow during the test
        for stack in _stack(
            tmp_path_factory, suffix="jointimeout", agents=2, slots=[3, 1], distinct_addresses=True
        ):
            stack.hang_dir = hang_dir
            yield stack


def test_abandoned_standbys_are_ended_and_the_members_go_on(hang_stack):
    api = hang_stack.api
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "join timeout",
            "entrypoint": "examples.digits",
            "hyperparameters": {
                "batch_size": 64,
                "lr": 0.05,
                "steps": 1_000_000,
                "log_every": 10,
                "monitor_every": 0,
            },
            "workers": {"initial": 2, "min": 1, "max": 4},
        },
    )
    assert status == 201, job
    job_id = job["id"]
    wait_for_job(
        api,
        job_id,
        lambda j: j["status"] == "running" and j["last_step"] >= 20,
        timeout_s=120,
        what="the job to train on node 1",
        stack=hang_stack,
    )
    (hang_stack.hang_dir / "hang").touch()

    status, body = api.post(
        f"/api/v1/jobs/{job_id}/commands/", {"action": "scale_workers", "value": 4}
    )
    assert status == 201, body
    detail = wait_for_job(
        api,
        job_id,
        lambda j: len(j["workers"]) == 4 and j,
        timeout_s=30,
        what="the joiners to be placed",
        stack=hang_stack,
    )
    placed = {w["rank"]: w["node"] for w in detail["workers"]}
    assert placed[0] == placed[1] == "node-1" and {placed[2], placed[3]} == {"node-1", "node-2"}, (
        placed
    )
    hung = wait_for(
        lambda: (pids := sorted(hang_stack.hang_dir.glob("joiner-*"))) and len(pids) == 2 and pids,
        timeout_s=60,
        what="both joiners to start (and hang)",
        stack=hang_stack,
    )
    pids = [int(p.read_text()) for p in hung]
    assert all(process_alive(pid) for pid in pids)

    # Given up on after the timeout (the beat task runs every 10 s): the grow fails, the
    # job runs on with its 2 members.
    scale = wait_for(
        lambda: next(
            (
                c
                for c in api.get(f"/api/v1/jobs/{job_id}/commands/")[1]
                if c["action"] == "scale_workers" and c["state"] == "failed"
            ),
            None,
        ),
        timeout_s=JOIN_TIMEOUT_S + 40,
        what="the grow to be given up on",
        stack=hang_stack,
    )
    assert "did not report standby" in scale["error"], scale
    wait_for(
        lambda: not any(process_alive(pid) for pid in pids),
        timeout_s=30,
        what="both agents to end their abandoned standby",
        stack=hang_stack,
    )
    stops = [c for c in api.get(f"/api/v1/jobs/{job_id}/commands/")[1] if c["action"] == "stop"]
    assert (
        sorted(c["node"] for c in stops) == ["node-1", "node-2"]
        and len({c["seq"] for c in stops}) == 1
    )
    wait_for(
        lambda: all(
            c["state"] == "applied"
            for c in api.get(f"/api/v1/jobs/{job_id}/commands/")[1]
            if c["action"] == "stop"
        ),
        timeout_s=30,
        what="the joiner stops to be applied",
        stack=hang_stack,
    )

    # The members never stopped, and a later command is applied by both at one step.
    detail = wait_for_job(
        api,
        job_id,
        lambda j: j["status"] == "running" and j,
        timeout_s=30,
        what="the job to run again",
        stack=hang_stack,
    )
    step = detail["last_step"]
    wait_for_job(
        api,
        job_id,
        lambda j: j["last_step"] >= step + 20,
        timeout_s=60,
        what="the members to train on",
        stack=hang_stack,
    )
    status, commands = api.post(
        f"/api/v1/jobs/{job_id}/commands/", {"action": "set_batch_size", "value": 32}
    )
    assert status == 201, commands
    applied = wait_for(
        lambda: (
            (
                done := [
                    c
                    for c in api.get(f"/api/v1/jobs/{job_id}/commands/")[1]
                    if c["action"] == "set_batch_size" and c["state"] == "applied"
                ]
            )
            and done
        ),
        timeout_s=60,
        what="set_batch_size to be applied after the joiner stop",
        stack=hang_stack,
    )
    assert (
        len(applied) == 1
        and applied[0]["node"] == "node-1"
        and applied[0]["applied_step"] is not None
    )
    members = {w["rank"]: w["state"] for w in api.get(f"/api/v1/jobs/{job_id}/")[1]["workers"]}
    assert members[0] == members[1] == "running" and members[2] == members[3] == "failed", members

    status, body = api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
    assert body["status"] == "cancelled"
