"""Each built-in policy template (besides GNS, in test_adaptive_job_end_to_end) run live on
the digits example through the whole stack: REST → Celery placement → agent → TensorFlow
workers → metrics → policy evaluation (Celery) → decision → command applied by every
worker at one step. The templates are used unchanged, as the API serves them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.conftest import wait_for, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=False)]


def template_policy(api, template_id: str) -> tuple[dict, dict]:
    """Save the built-in template as a policy; return the policy and its (only) rule."""
    status, templates = api.get("/api/v1/policies/templates/")
    assert status == 200, templates
    definition = next(t["definition"] for t in templates if t["id"] == template_id)
    status, policy = api.post("/api/v1/policies/", {"definition": definition})
    assert status == 201, policy
    return policy, definition["rules"][0]


def start_job(stack, name: str, policy: dict, **fields) -> dict:
    body = {
        "name": name,
        "entrypoint": "examples.digits",
        "policy": policy["id"],
        "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 1_000_000, "log_every": 5},
        "workers": {"initial": 2},
        **fields,
    }
    status, job = stack.api.post("/api/v1/jobs/", body)
    assert status == 201, job
    return job


def stop_job(stack, job_id: int) -> None:
    """Cancel the job and wait until its workers are gone, so the next test finds its slots free."""
    api = stack.api
    api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
    wait_for(
        lambda: all(
            w["state"] in ("exited", "left", "failed")
            for w in api.get(f"/api/v1/jobs/{job_id}/")[1]["workers"]
        ),
        timeout_s=60,
        what=f"the workers of job {job_id} to exit",
        stack=stack,
    )


def decisions_of(api, job_id: int) -> list[dict]:
    """The decisions' events (``data`` holds rule, inputs, action, outcome), oldest first."""
    return [
        e
        for e in api.get(f"/api/v1/jobs/{job_id}/events/")[1]
        if e["kind"] == "decision" and "inputs" in e["data"]
    ]


def commands_of(api, job_id: int, action: str) -> list[dict]:
    return [c for c in api.get(f"/api/v1/jobs/{job_id}/commands/")[1] if c["action"] == action]


def series(api, job_id: int, name: str) -> dict:
    """rank (None for the whole job) → {step: value}."""
    status, body = api.get(f"/api/v1/jobs/{job_id}/metrics/?names={name}&max_points=100000")
    assert status == 200, body
    return {s["rank"]: dict(zip(s["step"], s["value"], strict=True)) for s in body["series"]}


def checksums_after(stack, job_id: int, step: int) -> tuple[dict, list[int]]:
    """Both ranks' param_checksum series, once they share at least 3 steps after ``step``,
    and those steps."""

    def ready():
        sums = series(stack.api, job_id, "param_checksum")
        common = [s for s in sums.get(0, {}) if s > step and s in sums.get(1, {})]
        return len(common) >= 3 and (sums, common)

    return wait_for(
        ready, timeout_s=60, what=f"param_checksum from both ranks after step {step}", stack=stack
    )


@pytest.mark.timeout(300)
def test_sma_to_ssgd_template_switches_strategy_once_loss_halves_and_models_agree(stack):
    api = stack.api
    policy, _ = template_policy(api, "sma-to-ssgd")
    job = start_job(stack, "template sma → ssgd", policy, strategy="sma")
    job_id = job["id"]
    try:
        wait_for_job(
            api,
            job_id,
            lambda j: j["strategy"] == "ssgd",
            timeout_s=180,
            what="the rule to switch the job to S-SGD",
            stack=stack,
        )

        [event] = decisions_of(api, job_id)
        decision = event["data"]
        assert decision["rule"] == "switch to ssgd"
        assert decision["action"] == {"type": "set_strategy", "value": "ssgd"}
        assert decision["inputs"]["strategy"] == "sma"
        [command] = commands_of(api, job_id, "set_strategy")
        assert command["state"] == "applied" and command["payload"] == {"value": "ssgd"}
        assert command["issued_by"] == f"policy:{policy['name']}/switch to ssgd"
        switched = command["applied_step"]

        # The loss the rule saw is under half the highest loss recorded up to then.
        loss = series(api, job_id, "loss")[None]
        assert decision["inputs"]["loss"] < 0.5 * max(
            v for s, v in loss.items() if s <= event["step"]
        )

        # Under SMA each worker keeps its own model; from the switch on they hold one model.
        sums, common = checksums_after(stack, job_id, switched)
        assert all(sums[0][s] == sums[1][s] for s in common), {
            s: (sums[0][s], sums[1][s]) for s in common
        }
        before = [s for s in sums[0] if s <= switched and s in sums[1]]
        assert any(sums[0][s] != sums[1][s] for s in before), "models should differ under SMA"
    finally:
        stop_job(stack, job_id)


@pytest.mark.timeout(300)
def test_scale_out_template_adds_a_worker_to_an_elastic_job(stack):
    api = stack.api
    policy, _ = template_policy(api, "scale-out-while-efficient")
    # One worker alone runs hundreds of steps a second: report less often, so that ingesting
    # its metrics takes less of the CPU the joiner needs to start.
    job = start_job(
        stack,
        "template scale out",
        policy,
        workers={"initial": 1, "min": 1, "max": 3},
        hyperparameters={"batch_size": 32, "lr": 0.05, "steps": 1_000_000, "log_every": 50},
    )
    job_id = job["id"]
    try:
        # The rule's first firing needs only a throughput figure (it has no last_fire yet),
        # for 3 evaluations; its 60 s cooldown keeps it from firing again within this test.
        job = wait_for_job(
            api,
            job_id,
            lambda j: j["status"] == "running" and j["parameters"]["workers"] == 2 and j,
            timeout_s=180,
            what="the rule to grow the job to 2 workers",
            stack=stack,
        )
        assert job["cluster_version"] == 2

        [event] = decisions_of(api, job_id)
        decision = event["data"]
        assert decision["rule"] == "add a worker"
        assert decision["action"] == {"type": "scale_workers", "value": 2}
        assert decision["outcome"] == "commanded"
        assert decision["inputs"]["workers"] == 1 and decision["inputs"]["throughput"] > 0
        [command] = commands_of(api, job_id, "scale_workers")
        assert command["state"] == "applied" and command["payload"]["value"] == 2
        assert command["issued_by"] == f"policy:{policy['name']}/add a worker"
        grown = command["applied_step"]

        # Rank 0 reports the cluster size; after the grow it says 2, and both workers train.
        workers = wait_for(
            lambda: (w := series(api, job_id, "workers")[None]) and any(s > grown for s in w) and w,
            timeout_s=60,
            what="the workers metric after the grow",
            stack=stack,
        )
        assert {v for s, v in workers.items() if s <= event["step"]} == {1.0}
        assert {v for s, v in workers.items() if s > grown} == {2.0}
        assert sorted(
            w["cluster_rank"] for w in job["workers"] if w["cluster_rank"] is not None
        ) == [0, 1]
    finally:
        stop_job(stack, job_id)


@pytest.mark.timeout(300)
def test_topology_template_switches_to_tree_when_interference_cuts_throughput(stack):
    api = stack.api
    policy, rule = template_policy(api, "topology-on-interference")
    # The rule compares the policy's window of throughput reports with the best one of the
    # run. On a shared two-core machine reports vary several-fold with no interference at
    # all, so even a whole window could fall under 80 % before the test interferes: the
    # rule is switched off while the job records its best throughput and on once the
    # interference starts.
    status, body = api.request("PUT", f"/api/v1/policies/{policy['id']}/", {"enabled": False})
    assert status == 200 and body["enabled"] is False, body
    job = start_job(stack, "template topology", policy, topology="ring")
    job_id = job["id"]
    burners: list[subprocess.Popen] = []
    try:
        job = wait_for_job(
            api,
            job_id,
            lambda j: j["status"] == "running" and j["last_step"] >= 100 and j,
            timeout_s=180,
            what="training to get going",
            stack=stack,
        )
        assert job["topology"] == "ring"
        interfered_from = job["last_step"]

        # Interference: more busy loops than the machine has cores, until the rule acts.
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
        status, body = api.request("PUT", f"/api/v1/policies/{policy['id']}/", {"enabled": True})
        assert status == 200 and body["enabled"] is True, body
        job = wait_for_job(
            api,
            job_id,
            lambda j: j["topology"] == "tree" and j,
            timeout_s=120,
            what="the rule to switch the topology to tree",
            stack=stack,
        )
        stop_burners(burners)

        [event] = decisions_of(api, job_id)
        decision = event["data"]
        assert decision["rule"] == rule["name"]
        assert decision["action"] == {"type": "set_topology", "value": "tree"}
        assert decision["inputs"]["topology"] == "ring"
        assert event["step"] >= interfered_from
        throughput = series(api, job_id, "throughput")[None]
        peak_then = max(v for s, v in throughput.items() if s <= event["step"])
        assert decision["inputs"]["throughput"] < 0.8 * peak_then
        [command] = commands_of(api, job_id, "set_topology")
        assert command["state"] == "applied" and command["payload"] == {"value": "tree"}
        assert command["issued_by"] == f"policy:{policy['name']}/{rule['name']}"

        # Training goes on over the tree, and both workers still hold one model (S-SGD).
        sums, common = checksums_after(stack, job_id, command["applied_step"])
        assert all(sums[0][s] == sums[1][s] for s in common)
    finally:
        stop_burners(burners)
        stop_job(stack, job_id)


def stop_burners(burners: list[subprocess.Popen]) -> None:
    for burner in burners:
        burner.kill()
        burner.wait()
