"""The benchmark as the control plane, shared by ``bench.adaptive_batch`` and ``adaptive_outcome``.

:class:`PolicyDriver` evaluates a policy on each whole-job report as the control plane
does on ingest, with the product's pure engine (``controlplane.policies.engine``).
:func:`train` runs a workload (a worker module) as ``workers`` processes, reads rank 0's
reports as they come, answers the policy's firings with the same ``command`` lines the
agent forwards to every worker's stdin, stops the run at a limit and kills it on a
timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from agent import protocol
from agent.local import peer_list
from controlplane.policies import engine, goodput, goodput_choice, rules

ROOT = Path(__file__).resolve().parent.parent


class PolicyDriver:
    """Evaluates a policy on each whole-job report, as the control plane does on ingest
    (latest values, peaks, windows, per-rule hysteresis and cooldown)."""

    def __init__(
        self,
        policy: rules.Policy,
        *,
        batch_size: int,
        lr: float,
        workers: int,
        strategy: str = "ssgd",
        topology: str = "ring",
    ):
        self.policy = policy
        self.batch_size, self.lr, self.workers = batch_size, lr, workers
        # What the control plane knows from the commands the job applied.
        self.strategy, self.topology = strategy, topology
        self.latest: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.recent: dict[str, deque] = {}
        self.histories = {rule.name: rules.RuleHistory() for rule in policy.rules}
        self.fired_at: dict[str, float] = {}
        self.decisions: list[dict] = []
        # The run's step times per configuration, as the control plane reads them for
        # optimize_goodput (goodput_choice.step_profile over the run's series).
        self.profile = goodput.StepProfile()

    def observe(
        self, step: int, now: float, started: float, values: dict[str, float]
    ) -> list[rules.Firing]:
        for name, value in values.items():
            self.latest[name] = value
            self.peak[name] = max(value, self.peak.get(name, value))
            self.recent.setdefault(name, deque(maxlen=self.policy.window)).append((step, value))
        profiled = goodput_choice.uses_profile(self.policy)
        if profiled:
            goodput_choice.profile_add(
                self.profile,
                step,
                values,
                batch_size=int(self.latest.get("batch_size", self.batch_size)),
                workers=int(self.latest.get("workers", self.workers)),
            )
        state = rules.JobState(
            step=step,
            batch_size=int(self.latest.get("batch_size", self.batch_size)),
            lr=float(self.latest.get("lr", self.lr)),
            workers=self.workers,
            strategy=self.strategy,
            topology=self.topology,
            seconds_running=max(0.0, now - started),
            metrics=dict(self.latest),
            peak=dict(self.peak),
            recent={k: list(v) for k, v in self.recent.items()},
            profile=tuple(self.profile.points()) if profiled else (),
        )
        firings = []
        for rule in self.policy.rules:
            history = self.histories[rule.name]
            if rule.name in self.fired_at:
                history = rules.RuleHistory(
                    last_fired_step=history.last_fired_step,
                    last_fired_age_s=now - self.fired_at[rule.name],
                    consecutive_true=history.consecutive_true,
                    last_fire=history.last_fire,
                )
            outcome = engine.evaluate_rule(rule, state, history)
            if outcome.firing is None:
                self.histories[rule.name] = rules.RuleHistory(
                    last_fired_step=history.last_fired_step,
                    last_fired_age_s=history.last_fired_age_s,
                    consecutive_true=outcome.consecutive_true,
                    last_fire=history.last_fire,
                )
                continue
            self.fired_at[rule.name] = now
            self.histories[rule.name] = rules.RuleHistory(
                last_fired_step=step,
                last_fired_age_s=0.0,
                consecutive_true=0,
                last_fire=dict(outcome.firing.inputs),
            )
            self.decisions.append(
                {
                    "step": step,
                    "action": outcome.firing.action_type,
                    "value": outcome.firing.value,
                    "gns": self.latest.get("gns"),
                }
            )
            firings.append(outcome.firing)
        return firings


def _drain(stream, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


def train(
    *,
    worker: str,
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
    """One run of the workload ``python -m worker`` as ``workers`` processes. Rank 0's
    whole-job reports with a ``loss`` are read as they come; with a policy, each is
    evaluated and firings are sent as commands to every worker. The run is stopped (a
    ``stop`` command) once ``max_samples`` samples or ``max_steps`` steps are reported,
    and killed after ``timeout_s``. ``popen(rank, argv, **kw)`` starts a worker elsewhere
    (an emulated node), ``on_report(step, values)`` sees each report, and
    ``on_firing(firing)`` returning true carries a firing out instead of sending it.
    Returns the trace of reports (each with ``train_s``, the training time to it), the
    decisions, the routes a routed ring probed, and when training started (the time of
    the runtime's report before the first step, or None)."""
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
                [sys.executable, "-m", worker],
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
    return {"trace": trace, "decisions": decisions, "routes": routes, "started": started}
