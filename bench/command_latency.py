"""Latency from a REST command to the training workers applying it:
``python -m bench.command_latency --json``.

Starts the control plane and one agent, runs a 2-worker digits job, then issues
``set_lr`` commands one at a time over REST and measures, for each, the time from the
POST to the moment the control plane records that every worker applied it (the agent's
``applied`` report; the step is agreed by the workers). Reports p50/p95/p99 and the
median training step time for scale. A policy's command follows the same path after
the rule fires (Celery beat evaluates every ``POLICY_EVAL_INTERVAL_S``).
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench._stack import emit, log, percentile, running_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print JSON lines (the only format)")
    args = parser.parse_args()
    with running_stack(name="commands", agents=1, slots=2) as stack:
        api = stack.api
        status, job = api.post("/api/v1/jobs/", {"name": "command latency", "entrypoint": "examples.digits",
                                                 "hyperparameters": {"batch_size": 64, "lr": 0.05,
                                                                     "steps": 10_000_000, "log_every": 50},
                                                 "workers": {"initial": 2}})
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
            status, commands = api.post(f"/api/v1/jobs/{job['id']}/commands/", {"action": "set_lr", "value": value})
            assert status == 201, commands
            command_id = commands[0]["id"]
            while True:
                rows = {c["id"]: c for c in api.get(f"/api/v1/jobs/{job['id']}/commands/")[1]}
                if rows[command_id]["state"] in ("applied", "failed"):
                    break
                time.sleep(0.005)
            latencies.append(time.time() - t0)
        status, metrics = api.get(f"/api/v1/jobs/{job['id']}/metrics/?names=step_time&per_rank=false")
        step_time = statistics.median(metrics["series"][0]["value"]) if metrics["series"] else float("nan")
        api.post(f"/api/v1/jobs/{job['id']}/cancel/", {})
        ordered = sorted(latencies)
        emit({"bench": "command_latency", "path": "rest", "commands": len(ordered),
              "p50_ms": round(percentile(ordered, 0.5) * 1000, 1), "p95_ms": round(percentile(ordered, 0.95) * 1000, 1),
              "p99_ms": round(percentile(ordered, 0.99) * 1000, 1),
              "median_step_ms": round(step_time * 1000, 2)})


if __name__ == "__main__":
    main()
