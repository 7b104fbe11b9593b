"""Each built-in policy template (besides GNS, in test_adaptive_job_end_to_end) run live on
the digits example through the whole stack: REST → Celery placement → agent → TensorFlow
workers → metrics → policy evaluation (Celery) → decision → command applied by every
worker at one step. The templates are used as the API serves them; where a test needs
something else of a rule, it says so.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.conftest import wait_for, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=False)]


def template_policy(api, template_id: str, **rule_changes) -> tuple[dict, dict]:
    """Save the built-in template as a policy (its one rule changed by ``rule_changes``);
    return the policy and its rule."""
    status, templates = api.get("/api/v1/policies/templates/")
    assert status == 200, templates
    definition = next(t["definition"] for t in templates if t["id"] == template_id)
    definition["rules"][0].update(rule_changes)
    status, policy = api.post("/api/v1/policies/", {"definition": definition})
    assert status == 201, policy
    return policy, definition["rules"][0]


def start_job(stack, name: str, policy: dict, **fields) -> dict:
    body = {
        "name": name, "entrypoint": "examples.digits", "policy": policy["id"],
        "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 1_000_000, "log_every": 5},
        "workers": {"initial": 2}, **fields,
    }
    status, job = stack.api.post("/api/v1/jobs/", body)
    assert status == 201, job
    return job


def stop_job(stack, job_id: int) -> None:
    """Cancel the job and wait until its workers are gone, so the next test finds its slots free."""
    api = stack.api
    api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
    wait_for(lambda: all(w["state"] in ("exited", "left", "failed")
                         for w in api.get(f"/api/v1/jobs/{job_id}/")[1]["workers"]),
             timeout_s=60, what=f"the workers of job {job_id} to exit", stack=stack)


def decisions_of(api, job_id: int) -> list[dict]:
    """The decisions' events (``data`` holds rule, inputs, action, outcome), oldest first."""
    return [e for e in api.get(f"/api/v1/jobs/{job_id}/events/")[1]
            if e["kind"] == "decision" and "inputs" in e["data"]]


def commands_of(api, job_id: int, action: str) -> list[dict]:
    return [c for c in api.get(f"/api/v1/jobs/{job_id}/commands/")[1] if c["action"] == action]


def series(api, job_id: int, name: str) -> dict:
    """rank (None for the whole job) → {step: value}."""
    status, body = api.get(f"/api/v1/jobs/{job_id}/metrics/?names={name}&max_points=100000")
    assert status == 200, body
    return {s["rank"]: dict(zip(s["step"], s["value"], strict=True)) for s in body["series"]}


@pytest.mark.timeout(300)
def test_sma_to_ssgd_template_switches_strategy_once_loss_halves_and_models_agree(stack):
    api = stack.api
    policy, _ = template_policy(api, "sma-to-ssgd")
    job = start_job(stack, "template sma → ssgd", policy, strategy="sma")
    job_id = job["id"]
    try:
        wait_for_job(api, job_id, lambda j: j["strategy"] == "ssgd", timeout_s=180,
                     what="the rule to switch the job to S-SGD", stack=stack)

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
        assert decision["inputs"]["loss"] < 0.5 * max(v for s, v in loss.items() if s <= event["step"])

        # Under SMA each worker keeps its own model; from the switch on they hold one model.
        def checksums_after():
            sums = series(api, job_id, "param_checksum")
            common = [s for s in sums.get(0, {}) if s > switched and s in sums.get(1, {})]
            return len(common) >= 3 and (sums, common)

        sums, common = wait_for(checksums_after, timeout_s=60,
                                what="param_checksum from both ranks after the switch", stack=stack)
        assert all(sums[0][s] == sums[1][s] for s in common), {s: (sums[0][s], sums[1][s]) for s in common}
        before = [s for s in sums[0] if s <= switched and s in sums[1]]
        assert any(sums[0][s] != sums[1][s] for s in before), "models should differ under SMA"
    finally:
        stop_job(stack, job_id)
