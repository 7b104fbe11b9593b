"""Latency from a REST command to the training workers applying it:
``python -m bench.command_latency --json``.

Starts the control plane and one agent, runs a 2-worker digits job, then issues
``set_lr`` commands one at a time over REST and measures, for each, the time from the
POST to the moment the control plane records that every worker applied it (the agent's
``applied`` report; the step is agreed by the workers). Reports p50/p95/p99 and the
median training step time for scale (``"path": "rest"``).

Then (``"path": "policy"``) it attaches a policy whose rule fires every
``--policy-every`` steps (``steps_since_fired``) and measures, for each firing, from
the moment the condition became true — the worker's timestamp of the first metric
point at or past the firing step — to every worker having applied the command: agent
batching, ingest, the debounced evaluation, the decision, the command's delivery and
the workers' agreement on a step all count.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

from bench._stack import emit, log, percentile, running_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=30)
    parser.add_argument("--firings", type=int, default=15)
    parser.add_argument(
        "--policy-every", type=int, default=400, help="steps between the policy's firings"
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines (the only format)")
    args = parser.parse_args()
    with running_stack(name="commands", agents=1, slots=2) as stack:
        api = stack.api
        status, job = api.post(
            "/api/v1/jobs/",
            {
                "name": "command latency",
                "entrypoint": "examples.digits",
                "hyperparameters": {
                    "batch_size": 64,
                    "lr": 0.05,
                    "steps": 10_000_000,
                    "log_every": 50,
                },
                "workers": {"initial": 2},
            },
        )
        assert status == 201, job
        deadline = time.monotonic() + 180
        while api.get(f"/api/v1/jobs/{job['id']}/")[1]["last_step"] < 100:
            if time.monotonic() > deadline:
                raise SystemExit("the job did not start training within 180 s")
            time.sleep(0.5)
        log(f"issuing {args.commands} commands …")
        latencies = []
        for i in range(args.commands):
            value = 0.05 if i % 2 else 0.04
            t0 = time.time()
            status, commands = api.post(
                f"/api/v1/jobs/{job['id']}/commands/", {"action": "set_lr", "value": value}
            )
            assert status == 201, commands
            command_id = commands[0]["id"]
            while True:
                rows = {c["id"]: c for c in api.get(f"/api/v1/jobs/{job['id']}/commands/")[1]}
                if rows[command_id]["state"] in ("applied", "failed"):
                    break
                time.sleep(0.005)
            latencies.append(time.time() - t0)
        status, metrics = api.get(
            f"/api/v1/jobs/{job['id']}/metrics/?names=step_time&per_rank=false"
        )
        step_time = (
            statistics.median(metrics["series"][0]["value"]) if metrics["series"] else float("nan")
        )
        api.post(f"/api/v1/jobs/{job['id']}/cancel/", {})
        ordered = sorted(latencies)
        emit(
            {
                "bench": "command_latency",
                "path": "rest",
                "commands": len(ordered),
                "p50_ms": round(percentile(ordered, 0.5) * 1000, 1),
                "p95_ms": round(percentile(ordered, 0.95) * 1000, 1),
                "p99_ms": round(percentile(ordered, 0.99) * 1000, 1),
                "median_step_ms": round(step_time * 1000, 2),
            }
        )
        policy_latencies, policy_step = _policy_path(api, args.firings, args.policy_every)
        ordered = sorted(policy_latencies)
        emit(
            {
                "bench": "command_latency",
                "path": "policy",
                "commands": len(ordered),
                "p50_ms": round(percentile(ordered, 0.5) * 1000, 1),
                "p95_ms": round(percentile(ordered, 0.95) * 1000, 1),
                "p99_ms": round(percentile(ordered, 0.99) * 1000, 1),
                "median_step_ms": round(policy_step * 1000, 2),
            }
        )


def _seconds(timestamp: str) -> float:
    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _policy_path(api, firings: int, every: int) -> tuple[list[float], float]:
    status, policy = api.post(
        "/api/v1/policies/",
        {
            "definition": {
                "name": "latency tick",
                "rules": [
                    {
                        "name": "tick",
                        "when": f"size(last_fire) == 0 || steps_since_fired >= {every}",
                        "action": {"type": "set_lr", "value": "lr == 0.05 ? 0.04 : 0.05"},
                    }
                ],
            }
        },
    )
    assert status == 201, policy
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "policy latency",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 64, "lr": 0.05, "steps": 10_000_000, "log_every": 10},
            "workers": {"initial": 2},
            "policy": policy["id"],
        },
    )
    assert status == 201, job
    job_id = job["id"]
    log(f"waiting for {firings} policy firings (one every {every} steps) …")
    deadline = time.monotonic() + 60 + firings * 60
    while True:
        commands = [
            c
            for c in api.get(f"/api/v1/jobs/{job_id}/commands/")[1]
            if c["action"] == "set_lr" and c["state"] == "applied"
        ]
        if len(commands) >= firings + 1:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(commands)} policy commands were applied in time")
        time.sleep(1.0)
    api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
    commands.sort(key=lambda c: c["seq"])
    status, metrics = api.get(
        f"/api/v1/jobs/{job_id}/metrics/?names=loss,step_time&per_rank=false&max_points=100000"
    )
    series = {s["name"]: s for s in metrics["series"]}
    loss = series["loss"]
    status, events = api.get(f"/api/v1/jobs/{job_id}/events/")
    decisions = [e for e in events if e["kind"] == "decision" and "inputs" in (e.get("data") or {})]
    latencies = []
    # steps_since_fired counts from the step of the previous decision: the condition became
    # true when the first metric point at or past that step + every was taken. The first
    # firing is unconditional (at the job's first evaluation), so time the later ones.
    for previous, command in zip(decisions, commands[1:], strict=False):
        threshold = previous["step"] + every
        first = next(
            (t for s, t in zip(loss["step"], loss["time"], strict=True) if s >= threshold), None
        )
        if first is None or command["finished_at"] is None:
            continue
        became_true = _seconds(first) if isinstance(first, str) else float(first)
        latencies.append(_seconds(command["finished_at"]) - became_true)
    log(f"{len(decisions)} decisions recorded, {len(latencies)} timed")
    step_time = (
        statistics.median(series["step_time"]["value"]) if "step_time" in series else float("nan")
    )
    return latencies, step_time


if __name__ == "__main__":
    main()
