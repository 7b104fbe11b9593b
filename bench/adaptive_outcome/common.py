"""What every experiment of ``bench.adaptive_outcome`` shares: one run of the workload with
the benchmark playing the control plane (``train``), and medians over seeds."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from agent import protocol
from agent.local import peer_list
from bench.adaptive_batch import PolicyDriver
from controlplane.policies import engine, rules
from controlplane.policies.templates import TEMPLATES

ROOT = Path(__file__).resolve().parents[2]
WORKER = "bench._teacher_student_eval_worker"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def template_policy(template_id: str, **overrides) -> rules.Policy:
    """A built-in template as a user would copy it, with rule fields replaced
    (``cooldown_s``, ``for``, ``bounds``: what a user tunes per job)."""
    document = json.loads(json.dumps(next(t for t in TEMPLATES if t["id"] == template_id)))
    for rule in document["rules"]:
        for key, value in overrides.items():
            if key == "max":
                rule.setdefault("bounds", {})["max"] = value
            else:
                rule[key] = value
    return engine.parse_policy(document)


def _drain(stream, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


def train(
    *,
    hp: dict,
    workers: int,
    policy: rules.Policy | None,
    max_samples: int | None = None,
    max_steps: int | None = None,
    timeout_s: float = 600,
    popen: Callable[..., subprocess.Popen] | None = None,
    peers: list[str] | None = None,
    on_report: Callable[[int, dict], None] | None = None,
    on_firing: Callable[[rules.Firing], bool] | None = None,
    topology: str | None = None,
) -> dict:
    """One run of the workload as ``workers`` processes. Rank 0's whole-job reports are
    read as they come; with a policy, each is evaluated and firings are sent as commands
    to every worker. The run is stopped (a ``stop`` command) once ``max_samples`` samples
    or ``max_steps`` steps are reported. ``popen(rank, argv, **kw)`` starts a worker
    elsewhere (an emulated node), ``on_report(step, values)`` sees each report.
    Returns the trace of reports, the decisions and when training started."""
    peers = peers or peer_list(workers)
    popen = popen or (lambda rank, argv, **kw: subprocess.Popen(argv, **kw))
    procs = []
    for rank in range(workers):
        env = {
            **os.environ,
            protocol.ENV_JOB: "1",
            protocol.ENV_RANK: str(rank),
            protocol.ENV_PEERS: ",".join(peers),
            protocol.ENV_PARAMS: json.dumps(
                {"hyperparameters": hp, **({"topology": topology} if topology else {})}
            ),
            protocol.ENV_FIRST_SEQ: "0",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": str(ROOT),
        }
        env.setdefault("COLLECTIVE_TIMEOUT", "60")
        procs.append(
            popen(
                rank,
                [sys.executable, "-m", WORKER],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
        )
    errors: list[list[str]] = [[] for _ in procs]
    drains = [
        threading.Thread(target=_drain, args=(p.stderr, errors[r]), daemon=True)
        for r, p in enumerate(procs)
    ]
    drains += [threading.Thread(target=_drain, args=(p.stdout, []), daemon=True) for p in procs[1:]]
    for t in drains:
        t.start()
    timer = threading.Timer(timeout_s, lambda: [p.kill() for p in procs])
    timer.start()
    driver = (
        PolicyDriver(
            policy,
            batch_size=hp["batch_size"],
            lr=hp["lr"],
            workers=workers,
            topology=topology or "auto",
        )
        if policy
        else None
    )
    trace: list[dict] = []
    routes: list[dict] = []
    applied: list[dict] = []
    started = None
    seq = 0
    stopping = False

    def send(action: str, value=None) -> None:
        nonlocal seq
        seq += 1
        command = {"type": "command", "id": seq, "seq": seq, "action": action, "payload": {}}
        if value is not None:
            command["payload"]["value"] = value
        for proc in procs:
            try:
                proc.stdin.write(json.dumps(command) + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    try:
        for line in procs[0].stdout:
            if not line.startswith(protocol.PREFIX):
                continue
            message = json.loads(line[len(protocol.PREFIX) :])
            if message.get("type") == "applied":
                applied.append({"seq": message["seq"], "step": message["step"]})
            if message.get("type") != "metrics":
                continue
            points = message["points"]
            if started is None and any(
                p["name"] == "batch_size" and p["step"] == 0 for p in points
            ):
                started = points[0]["time"]  # the runtime's report just before the first step
            values = {p["name"]: p["value"] for p in points if "rank" not in p}
            if "ring_hop_mbps" in values:  # routed_ring probed its paths (agent.runtime.routing)
                routes.append({"step": points[0]["step"], **values})
            if "loss" not in values or stopping:
                continue
            step, now = points[0]["step"], points[0]["time"]
            # Training time from the end of the first step (see the worker), evaluations out.
            clock = values.get("clock_start") or started or now
            values["train_s"] = now - clock - values.get("eval_s", 0.0)
            trace.append({"step": step, "time": now, **values})
            if on_report is not None:
                on_report(step, values)
            if driver is not None:
                for firing in driver.observe(step, now, started or now, values):
                    if on_firing is not None and on_firing(firing):
                        continue  # carried out by the caller (a resize, as the agents do)
                    send(firing.action_type, firing.value)
                    if firing.action_type == "set_topology":
                        driver.topology = firing.value
                    elif firing.action_type == "set_strategy":
                        driver.strategy = firing.value
            if (max_samples and values.get("samples", 0) >= max_samples) or (
                max_steps and step >= max_steps
            ):
                send("stop")
                stopping = True
        for rank, proc in enumerate(procs):
            proc.stdin.close()
            if proc.wait() != 0:
                raise RuntimeError(
                    f"worker {rank} exited with {proc.returncode}:\n{''.join(errors[rank])[-3000:]}"
                )
    finally:
        timer.cancel()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    decisions = driver.decisions if driver else []
    for number, decision in enumerate(decisions, start=1):
        # Commands are numbered in the order sent; the policy's come first, then the stop.
        decision["applied_step"] = next((a["step"] for a in applied if a["seq"] == number), None)
    return {"trace": trace, "decisions": decisions, "routes": routes}


def median_or_none(values: list) -> float | None:
    """Median over seeds, a run that never reached the target counting as infinitely
    slow; None when that median is infinite (most runs never got there)."""
    median = statistics.median(float("inf") if v is None else v for v in values)
    return None if median == float("inf") else median


def spread(values: list) -> list | None:
    known = [v for v in values if v is not None]
    return [min(known), max(known)] if known else None


def throughput_hyperparameters(args: argparse.Namespace) -> dict:
    """The runs of the interference and scale-out experiments: ``--batch`` with lr scaled
    by √(batch/64), no evaluations (throughput only), the noise monitor every step."""
    return {
        "batch_size": args.batch,
        "lr": args.lr * (args.batch / 64) ** 0.5,
        "seed": 0,
        "samples": args.samples,
        "label_noise": args.label_noise,
        "log_every": args.log_every,
        "eval_every_samples": 10**12,  # no evaluations: throughput only
        "monitor_every": 1,
    }
