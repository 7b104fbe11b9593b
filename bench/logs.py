"""Job logs through the real stack (web, Celery, PostgreSQL, Redis, one agent):
``python -m bench.logs --json``.

* **Latency** (``logs_latency``): a worker prints a line every 1/``--rate-hz`` s carrying
  the time it printed it; a client logged in like a browser follows the job on
  ``/ws/jobs/{id}/`` and takes each line's latency as the time its ``log`` frame arrived
  minus that time (same host, same clock): worker → log keeper → file → agent → REST
  ingest → PostgreSQL → channel layer → WebSocket. Reports p50/p95/p99 (the goal: a
  line on the page within 1 s, p95).
* **Training cost** (``logs_training_cost``): the same ``examples.digits`` job, one worker,
  trained ``--repeats`` times each way, interleaved in one stack: printing nothing
  (``quiet``), printing ``--print-rate`` lines a second from a thread to /dev/null
  (``devnull``: what printing itself costs) and to its stdout, captured and shipped
  (``chatty``). Steps per second is 1 / the median of the job's ``step_time`` series
  after warm-up; ``ratio`` is the median chatty run's over the median quiet run's (the
  goal: ≥ 0.98, log shipping costing training at most 2 %), ``shipping_ratio`` chatty
  over devnull. Everything — workers, keeper, agent, web, PostgreSQL — shares the
  machine, as on a small node.

The workers are ``bench/_printing_worker.py`` (``AGENT_PYTHON`` is a wrapper that runs it
in place of the example, which it runs itself in training mode).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import statistics
import sys
import tempfile
import time
from pathlib import Path

import websockets

from bench._stack import emit, log, percentile, running_stack, session_cookie

TERMINAL = ("succeeded", "failed", "cancelled")


def _job(stack, name: str, script_dir: Path, script: dict, hyperparameters: dict) -> int:
    # One script file: jobs run one after another, each reads it as it starts.
    (script_dir / "seed-0.json").write_text(json.dumps(script))
    status, job = stack.api.post(
        "/api/v1/jobs/",
        {
            "name": name,
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 64, "lr": 0.05, "seed": 0, **hyperparameters},
            "workers": {"initial": 1},
        },
    )
    if status != 201:
        raise SystemExit(f"creating a benchmark job failed: {job}")
    return int(job["id"])


def _wait_ended(stack, job_id: int, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = stack.api.get(f"/api/v1/jobs/{job_id}/")[1]
        if job["status"] in TERMINAL:
            if job["status"] != "succeeded":
                raise SystemExit(f"benchmark job {job_id} {job['status']}: {job['status_reason']}")
            return job
        time.sleep(0.5)
    raise SystemExit(f"benchmark job {job_id} did not end within {timeout_s:.0f} s")


async def latency(stack, script_dir: Path, *, lines: int, rate_hz: float) -> dict:
    job_id = _job(
        stack,
        "log latency",
        script_dir,
        {"mode": "latency", "lines": lines + 10, "rate": rate_hz},
        {},
    )
    ws_url = stack.url.replace("http://", "ws://") + f"/ws/jobs/{job_id}/"
    latencies: list[float] = []
    async with websockets.connect(
        ws_url, additional_headers={"Cookie": session_cookie(stack)}, origin=stack.url
    ) as ws:
        while len(latencies) < lines + 10:
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
            if frame["type"] != "log":
                continue
            now = time.time()
            latencies += [
                now - float(x["text"].split()[1])
                for x in frame["data"]["lines"]
                if x["text"].startswith("latency ")
            ]
    _wait_ended(stack, job_id)
    ordered = sorted(latencies[10:])  # the first few warm up connections and caches
    return {
        "bench": "logs_latency",
        "lines": len(ordered),
        "rate_hz": rate_hz,
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 1),
        "p95_ms": round(percentile(ordered, 0.95) * 1000, 1),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def _steps_per_s(stack, job_id: int) -> float:
    status, body = stack.api.get(
        f"/api/v1/jobs/{job_id}/metrics/?names=step_time&per_rank=false&max_points=100000"
    )
    values = next(s["value"] for s in body["series"] if s["name"] == "step_time")
    after_warmup = values[len(values) // 5 :]
    return 1.0 / statistics.median(after_warmup)


def _lines_stored(stack, job_id: int) -> int:
    body = stack.api.get(f"/api/v1/jobs/{job_id}/logs/?tail=1")[1]
    return int(body["last_seq"])


def training_cost(stack, script_dir: Path, *, repeats: int, print_rate: float, steps: int) -> dict:
    arms = {
        "quiet": {"mode": "train", "rate": 0},
        "devnull": {"mode": "train", "rate": print_rate, "sink": "devnull"},
        "chatty": {"mode": "train", "rate": print_rate, "sink": "stdout"},
    }
    speed: dict[str, list[float]] = {arm: [] for arm in arms}
    shipped_per_s = []
    for i in range(repeats):
        for arm, script in arms.items():
            log(f"repeat {i + 1}/{repeats}: {arm} job ({steps} steps) …")
            started = time.monotonic()
            job_id = _job(
                stack, f"{arm} {i + 1}", script_dir, script, {"steps": steps, "log_every": 20}
            )
            _wait_ended(stack, job_id)
            elapsed = time.monotonic() - started
            speed[arm].append(round(_steps_per_s(stack, job_id), 1))
            if arm == "chatty":
                stored = _lines_stored(stack, job_id)
                if stored < print_rate:  # it trains for seconds: far more than a second's lines
                    raise SystemExit(f"the chatty job {job_id} stored only {stored} lines")
                shipped_per_s.append(round(stored / elapsed))
    median = {arm: statistics.median(values) for arm, values in speed.items()}
    return {
        "bench": "logs_training_cost",
        "model": "examples.digits",
        "workers": 1,
        "steps": steps,
        "print_lines_per_s": print_rate,
        "repeats": repeats,
        **{f"{arm}_steps_per_s": values for arm, values in speed.items()},
        **{f"median_{arm}_steps_per_s": value for arm, value in median.items()},
        # The goal's figure: printing and shipping 1,000 lines/s against printing nothing.
        "ratio": round(median["chatty"] / median["quiet"], 4),
        "cost_pct": round((1 - median["chatty"] / median["quiet"]) * 100, 2),
        # Capture and shipping alone: the same prints, shipped against sent to /dev/null.
        "shipping_ratio": round(median["chatty"] / median["devnull"], 4),
        "lines_stored_per_s": shipped_per_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300, help="latency: lines measured")
    parser.add_argument("--rate-hz", type=float, default=20.0, help="latency: lines per second")
    parser.add_argument("--repeats", type=int, default=3, help="training cost: runs of each kind")
    parser.add_argument(
        "--print-rate", type=float, default=1000.0, help="training cost: lines/s printed"
    )
    parser.add_argument("--steps", type=int, default=4000, help="training cost: steps per run")
    parser.add_argument("--skip-training", action="store_true", help="measure the latency only")
    parser.add_argument("--json", action="store_true", help="print JSON lines (the only format)")
    args = parser.parse_args()
    script_dir = Path(tempfile.mkdtemp(prefix="adaptrain-bench-logs-"))
    python = script_dir / "python"
    # The agent starts "python -m agent.runtime.launcher examples.digits.train" ($3 the module).
    python.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m agent.runtime.launcher bench._printing_worker "$3"\n'
    )
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    os.environ.update({"AGENT_PYTHON": str(python), "LOG_BENCH_DIR": str(script_dir)})
    with running_stack(agents=1, slots=2, name="logs") as stack:
        log(f"latency: {args.lines} lines at {args.rate_hz:g}/s …")
        emit(asyncio.run(latency(stack, script_dir, lines=args.lines, rate_hz=args.rate_hz)))
        if not args.skip_training:
            emit(
                training_cost(
                    stack,
                    script_dir,
                    repeats=args.repeats,
                    print_rate=args.print_rate,
                    steps=args.steps,
                )
            )


if __name__ == "__main__":
    main()
