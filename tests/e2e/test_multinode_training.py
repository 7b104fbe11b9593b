"""One job trained across three agents, each in a network namespace of its own (a host on
a virtual network; distinct loopback addresses where namespaces cannot be made):
placement spreads it, the control plane serves the cluster spec, the workers' ring runs
over the virtual network, and a command reaches every node's workers at the same step."""

import pytest

from tests.e2e.conftest import wait_for, wait_for_job

pytestmark = pytest.mark.e2e


def test_job_spans_three_nodes_and_applies_a_command_in_lock_step(multinode_stack):
    api = multinode_stack.api
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "three hosts",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 48, "lr": 0.05, "steps": 1_000_000, "log_every": 10},
            "workers": {"initial": 3},
        },
    )
    assert status == 201, job
    detail = wait_for_job(
        api,
        job["id"],
        lambda j: j["status"] == "running" and j,
        timeout_s=120,
        what="the job to run on three nodes",
        stack=multinode_stack,
    )
    assert sorted(w["node"] for w in detail["workers"]) == ["node-1", "node-2", "node-3"]
    if multinode_stack.namespaces is not None:
        # Each worker listens on its own namespace's address: every link is the veth network.
        nodes = {n["name"]: n for n in api.get("/api/v1/nodes/")[1]}
        hosts = sorted(nodes[f"node-{i + 1}"]["address"] for i in range(3))
        assert hosts == sorted(multinode_stack.namespaces.addresses), nodes
    wait_for_job(
        api,
        job["id"],
        lambda j: j["last_step"] >= 50,
        timeout_s=60,
        what="training to make progress",
        stack=multinode_stack,
    )

    status, commands = api.post(
        f"/api/v1/jobs/{job['id']}/commands/", {"action": "set_batch_size", "value": 96}
    )
    assert status == 201 and len(commands) == 3  # one row per node, one sequence number
    assert len({c["seq"] for c in commands}) == 1
    wait_for(
        lambda: all(
            c["state"] == "applied"
            for c in api.get(f"/api/v1/jobs/{job['id']}/commands/")[1]
            if c["action"] == "set_batch_size"
        ),
        timeout_s=60,
        what="all three nodes to apply the command",
        stack=multinode_stack,
    )
    applied = [
        c
        for c in api.get(f"/api/v1/jobs/{job['id']}/commands/")[1]
        if c["action"] == "set_batch_size"
    ]
    assert len({c["applied_step"] for c in applied}) == 1, applied
    assert sorted(c["node"] for c in applied) == ["node-1", "node-2", "node-3"]

    status, body = api.post(f"/api/v1/jobs/{job['id']}/cancel/", {})
    assert body["status"] == "cancelled"
    wait_for(
        lambda: all(
            w["state"] == "exited" for w in api.get(f"/api/v1/jobs/{job['id']}/")[1]["workers"]
        ),
        timeout_s=60,
        what="every node's workers to stop",
        stack=multinode_stack,
    )
