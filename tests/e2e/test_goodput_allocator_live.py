"""The goodput allocator live (issue 19 item 4): two elastic digits jobs on three agents
(2 + 1 + 1 slots), the Celery beat task ``policies.allocate_cluster`` switched on. Both
start with two workers (so both report a noise scale); one trains a small batch (its
steps are mostly communication), the other a large one (mostly computation). The
allocator models both from what they report and moves a slot between them through
``scale_workers`` as ``provisioning:goodput`` (a shrink, then the other job's grow in a
later round): the counts go from 2 + 2 to 1 + 3, and the adaptations view lists both
moves as the allocator's.

Which way the slot goes is the model's call from measured step times on a loaded
machine; the test checks that counts move through the allocator's commands, not which
job wins.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import _stack, wait_for, wait_for_job

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def allocator_stack(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOODPUT_ALLOCATOR_INTERVAL_S", "5")
        mp.setenv("GOODPUT_RESTART_S", "0.5")
        yield from _stack(
            tmp_path_factory,
            suffix="allocator",
            agents=3,
            slots=[2, 1, 1],
            distinct_addresses=True,
        )


def _job(api, name: str, batch: int) -> int:
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": name,
            "entrypoint": "examples.digits",
            "hyperparameters": {
                "batch_size": batch,
                "lr": 0.05,
                "steps": 1_000_000,
                "log_every": 10,
            },
            "workers": {"initial": 2, "min": 1, "max": 3},
        },
    )
    assert status == 201, job
    return job["id"]


def test_two_elastic_jobs_on_three_agents_get_their_worker_counts_moved(allocator_stack):
    stack = allocator_stack
    api = stack.api
    jobs = [_job(api, "small batch", 16), _job(api, "large batch", 512)]
    try:
        for job_id in jobs:
            wait_for_job(
                api,
                job_id,
                lambda j: j["status"] == "running" and j["parameters"]["workers"] == 2,
                timeout_s=120,
                what=f"job {job_id} to run with two workers",
                stack=stack,
            )

        def moved():
            commands = [
                c
                for job_id in jobs
                for c in api.get(f"/api/v1/jobs/{job_id}/commands/")[1]
                if c["action"] == "scale_workers" and c["issued_by"] == "provisioning:goodput"
            ]
            return any(c["state"] == "applied" for c in commands) and commands

        commands = wait_for(
            moved, timeout_s=180, what="the allocator to move a worker", stack=stack
        )
        counts = {j: api.get(f"/api/v1/jobs/{j}/")[1]["parameters"]["workers"] for j in jobs}
        print(f"[allocator] workers after the first move: {counts}; commands: {commands}")
        assert sorted(counts.values()) != [2, 2], counts
        assert sum(counts.values()) <= 4

        # The allocator shrinks first; the slot that frees goes to the other job in a later
        # round (a grow that finds no room yet is refused and tried again).
        def counts_now():
            return {j: api.get(f"/api/v1/jobs/{j}/")[1]["parameters"]["workers"] for j in jobs}

        counts = wait_for(
            lambda: (
                (c := counts_now()) and sum(c.values()) == 4 and sorted(c.values()) == [1, 3] and c
            ),
            timeout_s=90,
            what="the freed slot to go to the other job (1 + 3 workers)",
            stack=stack,
        )
        print(f"[allocator] workers after the grow: {counts}")
        # Each move is a decision on the job's audit trail, with the speedups.
        events = [
            e
            for j in jobs
            for e in api.get(f"/api/v1/jobs/{j}/events/")[1]
            if e["kind"] == "decision" and e["actor"] == "provisioning:goodput"
        ]
        assert events and all("speedup_to" in e["data"] for e in events)

        # The adaptations view lists the applied moves as the allocator's (the grow is
        # applied once its new worker joined: the count above is the wanted size).
        def applied_moves():
            return [
                a
                for j in jobs
                for a in api.get(f"/api/v1/jobs/{j}/adaptations/")[1]["adaptations"]
                if a["action"] == "scale_workers" and a["state"] == "applied"
            ]

        rows = wait_for(
            lambda: (r := applied_moves()) and len(r) >= 2 and r,
            timeout_s=90,
            what="both moves to be applied",
            stack=stack,
        )
        assert all(a["issued_by"] == "provisioning:goodput" for a in rows), rows
        assert sorted((a["value_from"], a["value_to"]) for a in rows)[:2] == [(2, 1), (2, 3)]
    finally:
        for job_id in jobs:
            api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
