"""Faults with real processes: web, Celery worker and beat, two agents of one slot each,
a job spread over both, its workers the stand-in of tests/support/fault_worker.py (no
TensorFlow: one ``loss`` point per worker and step, every command application logged).

Each scenario kills one part of the stack with SIGKILL mid-training, issues commands
throughout, and asserts what an operator cares about: the job's final status is what
its workers did, every command was applied once by every worker (none twice, none
lost), every metric point was stored once (none lost, none doubled), and the API never
answered 500. ``python -m devtools.run_tests tests/faults -m faults`` runs them apart;
their timings go into docs/operations.md (``FAULT_REPORT=path`` appends one JSON line
per scenario).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from agent.local import free_port
from devtools.devstack import RedisServer
from tests.e2e.conftest import _stack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

FAULT_WORKER = Path(__file__).resolve().parents[1] / "support" / "fault_worker.py"
HEARTBEAT_TIMEOUT_S = 4
GRACE_S = 120


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory):
    """The stack on a Redis of its own (a scenario kills it)."""
    if not RedisServer.available():
        pytest.skip("redis-server is not installed: the fault tests kill a Redis of their own")
    redis = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    redis.start()
    try:
        for stack in fault_stack_on(tmp_path_factory, redis_url=redis.url, suffix="faults"):
            stack.redis = redis
            yield stack
    finally:
        redis.stop()


def fault_stack_on(
    tmp_path_factory,
    *,
    redis_url: str,
    suffix: str,
    database_url=None,
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
):
    """Web, Celery and two agents of one slot, whose workers are the stand-in, on Redis
    ``redis_url`` and (when given) the PostgreSQL server of ``database_url``."""
    folder = tmp_path_factory.mktemp("fault-workers")
    python = folder / "python"
    # The agents start "python -m <entrypoint>"; this interpreter runs the stand-in instead.
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAULT_WORKER}"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AGENT_PYTHON": str(python),
            "FAULT_WORKER_DIR": str(folder),
            "FAULT_WORKER_STEP_S": "0.01",
            "AGENT_HEARTBEAT_S": "1",
            "AGENT_HEARTBEAT_TIMEOUT_S": str(heartbeat_timeout_s),
            "NODE_LOST_GRACE_S": str(GRACE_S),
        }.items():
            mp.setenv(name, value)
        for stack in _stack(
            tmp_path_factory,
            suffix=suffix,
            agents=2,
            slots=1,
            distinct_addresses=True,
            redis_url=redis_url,
            database_url=database_url,
        ):
            stack.fault_dir = folder
            yield stack


class Run:
    """One scenario: its job, the commands it issued, the stall it saw."""

    def __init__(self, stack, name: str, steps: int, node_selector: dict | None = None):
        self.stack, self.api, self.steps = stack, stack.api, steps
        self.statuses: list[int] = []
        self.commands: list[int] = []
        status, job = self.api.post(
            "/api/v1/jobs/",
            {
                "name": name,
                "entrypoint": "examples.digits",
                "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": steps},
                "workers": {"initial": 2, "min": 2, "max": 2},
                **({"node_selector": node_selector} if node_selector else {}),
            },
        )
        assert status == 201, job
        self.id = job["id"]
        self.started = time.monotonic()
        job = self.wait(lambda j: j["status"] == "running", "the job to run on both nodes", 60)
        # Spread over two agents, one worker each.
        self.nodes = sorted({w["node"] for w in job["workers"]})
        assert len(self.nodes) == 2, job["workers"]

    def job(self) -> dict:
        status, job = self.api.get(f"/api/v1/jobs/{self.id}/")
        self.statuses.append(status)
        assert status != 500, job
        return job if status == 200 else {}

    def wait(self, predicate, what: str, timeout_s: float) -> dict:
        return wait_for(
            lambda: (j := self.job()) and predicate(j) and j, timeout_s=timeout_s, what=what
        )

    def command(self, lr: float) -> None:
        status, command = self.api.post(
            f"/api/v1/jobs/{self.id}/commands/", {"action": "set_lr", "value": lr}
        )
        self.statuses.append(status)
        assert status == 201, command
        # One command row per node the job runs on, all with the job's next number.
        seqs = {c["seq"] for c in command}
        assert len(seqs) == 1, command
        self.commands.append(seqs.pop())

    def worker_log(self, node: str) -> str:
        logs = self.stack.log_dir / "agents" / node / "logs"
        return "".join(
            p.read_text(errors="replace") for p in logs.glob(f"job-{self.id}.rank-*.log")
        )

    def finished_on(self, node: str) -> bool:
        return f"finished {self.steps} steps" in self.worker_log(node)

    def check(
        self, *, status: str, fault: str, downtime_s: float, all_applied: bool = True
    ) -> None:
        """The job ends ``status``; every command applied once per worker; every point once."""
        job = self.wait(
            lambda j: j["status"] in ("succeeded", "failed", "cancelled"), "the job to end", 120
        )
        assert job["status"] == status, job["status_reason"]
        # Each agent posts its points before it reports its part over and forgets the job.
        states = [
            self.stack.log_dir / "agents" / n / "jobs" / f"job-{self.id}.json" for n in self.nodes
        ]
        wait_for(
            lambda: not any(p.exists() for p in states),
            timeout_s=60,
            what="both agents to be done with the job",
        )
        applied = _applied(self.stack.fault_dir, self.id)
        for rank in (0, 1):
            seqs = [seq for seq, _ in applied.get(rank, [])]
            assert len(seqs) == len(set(seqs)), (rank, seqs)  # none applied twice
        status_code, rows = self.api.get(f"/api/v1/jobs/{self.id}/commands/")
        assert status_code == 200, rows
        not_applied = {
            r["seq"]: r["error"]
            for r in rows
            if r["action"] == "set_lr" and r["state"] != "applied"
        }
        for seq in self.commands:
            if seq in not_applied:
                # Never lost silently: every node that did not apply it said failed, with why.
                assert rows and all(
                    r["state"] == "failed" and r["error"]
                    for r in rows
                    if r["seq"] == seq and r["state"] != "applied"
                ), rows
            else:
                assert all(seq in [s for s, _ in applied.get(rank, [])] for rank in (0, 1)), (
                    seq,
                    applied,
                )
        if all_applied:
            assert not not_applied, not_applied
        # Nothing written by a request that was refused (a 503): every set_lr row is one
        # of the commands the API accepted.
        assert {r["seq"] for r in rows if r["action"] == "set_lr"} == set(self.commands), rows
        counts, stall_s = _points(self.stack, self.id)
        expected = {0: self.steps, 1: self.steps} if status == "succeeded" else None
        if expected is not None:
            assert counts == {r: (n, n) for r, n in expected.items()}, counts
        assert 500 not in self.statuses
        web_log = (self.stack.log_dir / "web.log").read_text(errors="replace")
        assert "Internal Server Error" not in web_log
        _report(
            fault=fault,
            downtime_s=round(downtime_s, 1),
            outcome=job["status"],
            stall_s=round(stall_s, 2),
            commands=f"{len(self.commands)} issued, {sum(len(v) for v in applied.values())} "
            f"applications (2 workers), 0 twice"
            + (
                f", {len(not_applied)} not applied (failed: {set(not_applied.values())})"
                if not_applied
                else ""
            ),
            points=f"{sum(n for n, _ in counts.values())} stored of "
            f"{2 * self.steps} planned, 0 doubled",
        )


def _applied(folder: Path, job_id: int) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for rank in (0, 1):
        path = folder / f"applied-{job_id}-{rank}"
        if path.exists():
            out[rank] = [
                (int(seq), int(step))
                for seq, _, step in (line.split() for line in path.read_text().splitlines())
            ]
    return out


def _points(stack, job_id: int) -> tuple[dict[int, tuple[int, int]], float]:
    """Per rank: (points stored, distinct steps among them) of the job's ``loss`` series;
    and the stall: the longest wall-clock gap between two consecutive steps of a worker,
    beyond the stand-in's own step time."""
    out = stack.manage(
        "shell",
        "-c",
        "import json; from controlplane.metrics.models import MetricPoint as P; "
        f"q = P.objects.filter(job_id={job_id}, name='loss').order_by('rank', 'step')"
        ".values_list('rank', 'step', 'time'); "
        "print(json.dumps([[r, s, t.timestamp()] for r, s, t in q]))",
    )
    rows = json.loads(out.strip().splitlines()[-1])
    counts: dict[int, tuple[int, int]] = {}
    stall = 0.0
    for rank in sorted({r for r, _, _ in rows}):
        mine = [(s, t) for r, s, t in rows if r == rank]
        counts[rank] = (len(mine), len({s for s, _ in mine}))
        gaps = [b[1] - a[1] for a, b in zip(mine, mine[1:], strict=False)]
        stall = max([stall, *gaps])
    return counts, max(0.0, stall - 0.01)


def _report(**row) -> None:
    path = os.environ.get("FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    print("[fault]", json.dumps(row), flush=True)


def _node(api, name: str) -> dict:
    return next(n for n in api.get("/api/v1/nodes/")[1] if n["name"] == name)


def _kill_agent(stack, node: str) -> float:
    proc = stack.processes.pop(f"agent-{node}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return time.monotonic()


def test_an_agent_killed_for_5_s_loses_nothing(fault_stack):
    run = Run(fault_stack, "agent away 5 s", steps=1500)
    time.sleep(2)
    killed = _kill_agent(fault_stack, "node-2")
    run.command(0.04)
    time.sleep(5 - (time.monotonic() - killed))
    fault_stack.restart_agent("agent-node-2")
    downtime = time.monotonic() - killed
    run.command(0.03)
    run.check(status="succeeded", fault="agent kill -9", downtime_s=downtime)


def test_agents_away_past_the_heartbeat_timeout_while_their_workers_finish(fault_stack):
    # Both agents die; the nodes become unreachable — the job keeps running, the job page
    # says since when — while the workers finish training unseen. The agents come back,
    # learn from their workers how they ended, post the points they buffered, and the job
    # succeeds (it used to fail, "node lost", and lose the points).
    stack, api = fault_stack, fault_stack.api
    run = Run(stack, "agents away past the timeout, workers finish", steps=800)
    run.command(0.04)
    wait_for(
        lambda: (
            all(
                run.commands[-1:] == [s for s, _ in v]
                for v in _applied(stack.fault_dir, run.id).values()
            )
            and len(_applied(stack.fault_dir, run.id)) == 2
        ),
        timeout_s=30,
        what="both workers to apply the command",
    )
    killed = [_kill_agent(stack, n) for n in ("node-1", "node-2")][0]
    wait_for(
        lambda: all(_node(api, n)["status"] == "unreachable" for n in ("node-1", "node-2")),
        timeout_s=HEARTBEAT_TIMEOUT_S + 30,
        what="both nodes to be unreachable",
    )
    job = run.job()
    assert job["status"] == "running", job["status_reason"]
    assert [u["node"] for u in job["unreachable_nodes"]] == ["node-1", "node-2"]
    wait_for(
        lambda: run.finished_on("node-1") and run.finished_on("node-2"),
        timeout_s=60,
        what="the workers to finish while their agents are away",
    )
    assert run.job()["status"] == "running"
    for node in ("node-1", "node-2"):
        stack.restart_agent(f"agent-{node}")
    downtime = time.monotonic() - killed
    run.check(
        status="succeeded",
        fault="agent kill -9 (both), workers finish meanwhile",
        downtime_s=downtime,
    )


def test_an_agent_away_past_the_heartbeat_timeout_finds_its_workers_still_training(fault_stack):
    stack, api = fault_stack, fault_stack.api
    run = Run(stack, "agent away past the timeout, workers train on", steps=2500)
    time.sleep(2)
    killed = _kill_agent(stack, "node-2")
    run.command(0.04)
    wait_for(
        lambda: _node(api, "node-2")["status"] == "unreachable",
        timeout_s=HEARTBEAT_TIMEOUT_S + 30,
        what="node-2 to be unreachable",
    )
    assert run.job()["status"] == "running"
    assert not run.finished_on("node-2")
    stack.restart_agent("agent-node-2")
    downtime = time.monotonic() - killed
    wait_for(
        lambda: _node(api, "node-2")["status"] == "online",
        timeout_s=30,
        what="node-2 to be online again",
    )
    run.command(0.03)
    run.check(
        status="succeeded",
        fault="agent kill -9, workers train on",
        downtime_s=downtime,
    )


def test_a_killed_worker_fails_the_job_with_its_reason(fault_stack):
    run = Run(fault_stack, "worker killed", steps=3000)
    time.sleep(2)
    state = json.loads(
        (fault_stack.log_dir / "agents" / "node-2" / "jobs" / f"job-{run.id}.json").read_text()
    )
    pid = state["workers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    run.check(status="failed", fault="worker kill -9", downtime_s=0.0)
    job = run.job()
    assert "exited" in job["status_reason"] or "signal" in job["status_reason"], job


def test_the_web_server_killed_mid_training_loses_nothing(fault_stack):
    stack = fault_stack
    run = Run(stack, "web killed", steps=3000)
    time.sleep(2)
    run.command(0.04)
    proc = stack.processes.pop("web")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    killed = time.monotonic()
    time.sleep(3)
    stack.start_web(check_port=False)
    downtime = time.monotonic() - killed
    run.command(0.03)
    run.check(status="succeeded", fault="web server kill -9", downtime_s=downtime)


def test_the_celery_worker_killed_mid_training_loses_nothing(fault_stack):
    stack = fault_stack
    run = Run(stack, "celery killed", steps=1500)
    time.sleep(2)
    killed = time.monotonic()
    stack.stop_celery(kill=True)
    run.command(0.04)
    time.sleep(3)
    stack.start_celery()
    downtime = time.monotonic() - killed
    run.command(0.03)
    run.check(status="succeeded", fault="Celery worker+beat kill -9", downtime_s=downtime)


def test_redis_killed_mid_training_loses_nothing(fault_stack):
    stack = fault_stack
    run = Run(stack, "redis killed", steps=3000)
    time.sleep(2)
    run.command(0.04)
    stack.redis.stop()  # SIGKILL: an empty Redis comes back
    killed = time.monotonic()
    run.command(0.03)  # a row first: pushed once an agent is connected again
    time.sleep(3)
    stack.redis.start()
    downtime = time.monotonic() - killed
    # A command whose ack failed as the channel closed is still forwarded (it once was
    # acked by both agents and applied by neither worker: test_command_ack_failure.py).
    run.check(status="succeeded", fault="Redis kill -9 (restarted empty)", downtime_s=downtime)


def _add_agent(stack, name: str, address: str, labels: str) -> None:
    """Start one more agent of one slot, labelled ``labels``, on a join token of its own."""
    token = stack.manage("create_join_token", "--label", name).strip()
    stack.agent_env[f"agent-{name}"] = {
        **stack.agent_env["agent-node-1"],
        "AGENT_JOIN_TOKEN": token,
        "AGENT_NAME": name,
        "AGENT_ADDRESS": address,
        "AGENT_STATE_DIR": str(stack.log_dir / "agents" / name),
        "AGENT_LABELS": labels,
    }
    stack.restart_agent(f"agent-{name}")


AWAY_S = 60


def test_agents_away_for_60_s_one_jobs_workers_finish_the_others_train_on(fault_stack):
    # The 60 s, waited for once for both cases: two more agents make two jobs of
    # two workers, each spread over two agents; one agent of each job is killed for 60 s.
    # Job "finish" has its workers finish while their agent is away; job "train on" still
    # trains when it comes back. Both stay running meanwhile (their nodes only
    # unreachable), both succeed with every point and every command. Runs last: the
    # extra agents are stopped at its end.
    stack, api = fault_stack, fault_stack.api
    _add_agent(stack, "node-3", "127.0.0.4", "pair=b")
    _add_agent(stack, "node-4", "127.0.0.5", "pair=b")
    try:
        wait_for(
            lambda: sum(n["status"] == "online" for n in api.get("/api/v1/nodes/")[1]) == 4,
            timeout_s=60,
            what="4 agents online",
        )
        train_on = Run(stack, "agent away 60 s, workers train on", 9000, {"pair": "b"})
        finish = Run(stack, "agent away 60 s, workers finish", steps=2000)
        assert train_on.nodes == ["node-3", "node-4"] and finish.nodes == ["node-1", "node-2"]
        finish.command(0.04)
        train_on.command(0.04)
        # Taken by every worker before the agents go: a command issued a moment before the
        # kill may reach node-2's workers only after they finished (then it is reported
        # failed, "left before applying it"), and this scenario is about the outage.
        for run in (finish, train_on):
            wait_for(
                lambda run=run: (
                    all(
                        run.commands[-1] in [s for s, _ in applied]
                        for applied in _applied(stack.fault_dir, run.id).values()
                    )
                    and len(_applied(stack.fault_dir, run.id)) == 2
                ),
                timeout_s=30,
                what=f"both workers of job {run.id} to apply the command",
            )
        killed = time.monotonic()
        for node in ("node-2", "node-4"):
            _kill_agent(stack, node)
        last_command = time.monotonic()
        seen: dict[str, set[str]] = {"finish": set(), "train on": set()}
        while (away := time.monotonic() - killed) < AWAY_S or not finish.finished_on("node-2"):
            assert away < AWAY_S + 60, "the workers of job 'finish' did not finish"
            for name, run in (("finish", finish), ("train on", train_on)):
                job = run.job()
                if job:
                    seen[name].add(job["status"])
            if time.monotonic() - last_command > 10 and away < AWAY_S - 5:
                train_on.command(0.03 - 0.001 * len(train_on.commands))
                last_command = time.monotonic()
            time.sleep(1)
        # Never given up on while its agent was away: only the node was unreachable. (Job
        # "finish" may succeed meanwhile: node-1 reports its workers' success, and a job
        # succeeds when a node's part does; node-2's points come when its agent is back.)
        assert seen["train on"] == {"running"} and seen["finish"] <= {"running", "succeeded"}
        assert [u["node"] for u in train_on.job()["unreachable_nodes"]] == ["node-4"]
        assert _node(api, "node-2")["status"] == "unreachable"
        assert finish.finished_on("node-1") and finish.finished_on("node-2")
        assert not train_on.finished_on("node-4")
        for node in ("node-2", "node-4"):
            stack.restart_agent(f"agent-{node}")
        downtime = time.monotonic() - killed
        wait_for(
            lambda: _node(api, "node-4")["status"] == "online",
            timeout_s=30,
            what="node-4 to be online again",
        )
        train_on.command(0.02)
        finish.check(
            status="succeeded",
            fault="agent kill -9, workers finish meanwhile",
            downtime_s=downtime,
        )
        train_on.check(
            status="succeeded", fault="agent kill -9, workers train on", downtime_s=downtime
        )
    finally:
        for name in ("agent-node-3", "agent-node-4"):
            proc = stack.processes.pop(name, None)
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
