"""Live commands on real worker processes: batch size with the linear lr rule, pause,
checkpoint, resume and stop are applied by both workers at the same step; a new run
resumes from the checkpoint."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

from agent import protocol
from agent.local import ROOT, peer_list


class Workers:
    def __init__(self, n: int, hyperparameters: dict, **params):
        peers = ",".join(peer_list(n))
        self.messages: queue.Queue = queue.Queue()
        self.procs = []
        for rank in range(n):
            env = {
                **os.environ,
                protocol.ENV_JOB: "1",
                protocol.ENV_RANK: str(rank),
                protocol.ENV_PEERS: peers,
                protocol.ENV_PARAMS: json.dumps({"hyperparameters": hyperparameters, **params}),
                protocol.ENV_FIRST_SEQ: "0",
                "TF_CPP_MIN_LOG_LEVEL": "3",
                "COLLECTIVE_TIMEOUT": "60",
            }
            proc = subprocess.Popen(
                [sys.executable, "-m", "examples.digits.train"],
                cwd=ROOT,
                env=env,
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            threading.Thread(target=self._read, args=(rank, proc), daemon=True).start()
            self.procs.append(proc)
        self.seq = 0

    def _read(self, rank, proc):
        for line in proc.stdout:
            if line.startswith(protocol.PREFIX):
                self.messages.put((rank, json.loads(line[len(protocol.PREFIX) :])))

    def command(self, action, value=None):
        self.seq += 1
        line = (
            json.dumps(
                {
                    "type": "command",
                    "id": 100 + self.seq,
                    "seq": self.seq,
                    "action": action,
                    "payload": {} if value is None else {"value": value},
                }
            )
            + "\n"
        )
        for proc in self.procs:
            proc.stdin.write(line)
            proc.stdin.flush()
        return 100 + self.seq

    def wait_for(self, predicate, timeout=60):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                rank, message = self.messages.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append((rank, message))
            if predicate(seen):
                return seen
        raise AssertionError(f"timed out; last messages: {seen[-5:]}")

    def applied_steps(self, command_id, timeout=60) -> dict[int, int]:
        seen = self.wait_for(
            lambda s: (
                sum(m.get("type") == "applied" and m["id"] == command_id for _, m in s)
                == len(self.procs)
            ),
            timeout,
        )
        return {
            r: m["step"] for r, m in seen if m.get("type") == "applied" and m["id"] == command_id
        }

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()


def job_metric(seen, name):
    return [
        (p["step"], p["value"])
        for _, m in seen
        if m.get("type") == "metrics"
        for p in m["points"]
        if p["name"] == name and "rank" not in p
    ]


@pytest.fixture
def workers(tmp_path):
    w = Workers(
        2,
        {
            "batch_size": 32,
            "lr": 0.05,
            "steps": 10_000_000,
            "log_every": 10,
            "seed": 1,
            "lr_scaling": "linear",
            "checkpoint_dir": str(tmp_path / "ckpt"),
        },
    )
    yield w
    w.close()


def test_commands_apply_at_the_same_step_and_a_checkpoint_resumes(workers, tmp_path):
    workers.wait_for(lambda s: any(job_metric([x], "loss") for x in s))
    steps = workers.applied_steps(workers.command("set_batch_size", 64))
    assert steps[0] == steps[1]
    seen = workers.wait_for(lambda s: any(v == pytest.approx(0.1) for _, v in job_metric(s, "lr")))
    assert job_metric(seen, "lr")  # the linear rule doubled the learning rate

    paused_at = workers.applied_steps(workers.command("pause"))
    assert paused_at[0] == paused_at[1]
    time.sleep(1.0)
    while not workers.messages.empty():  # nothing but what was in flight before the pause
        _, message = workers.messages.get()
        assert all(p["step"] <= paused_at[0] for p in message.get("points", []))

    checkpoint_at = workers.applied_steps(workers.command("checkpoint"))
    assert checkpoint_at[0] == checkpoint_at[1] == paused_at[0]
    folder = tmp_path / "ckpt" / f"step-{paused_at[0]:09d}"
    meta = json.loads((folder / "meta.json").read_text())
    assert (
        meta["step"] == paused_at[0]
        and meta["batch_size"] == 64
        and meta["lr"] == pytest.approx(0.1)
    )

    workers.applied_steps(workers.command("resume"))
    workers.wait_for(lambda s: any(step > paused_at[0] for step, _ in job_metric(s, "loss")))
    workers.applied_steps(workers.command("stop"))
    assert [p.wait(timeout=60) for p in workers.procs] == [0, 0]

    resumed = Workers(
        1,
        {
            "batch_size": 32,
            "lr": 0.05,
            "steps": paused_at[0] + 20,
            "log_every": 10,
            "seed": 1,
            "resume_from": str(folder),
        },
    )
    try:
        assert resumed.procs[0].wait(timeout=120) == 0
        seen = resumed.wait_for(
            lambda s: any(
                m.get("type") == "metrics" and any(p["name"] == "val_accuracy" for p in m["points"])
                for _, m in s
            )
        )
        loss_steps = [step for step, _ in job_metric(seen, "loss")]
        assert loss_steps and min(loss_steps) > paused_at[0]
        assert all(v == 64 for _, v in job_metric(seen, "batch_size"))
        assert all(v == pytest.approx(0.1) for _, v in job_metric(seen, "lr"))
    finally:
        resumed.close()


def test_checkpoint_without_a_directory_fails_cleanly(tmp_path):
    w = Workers(2, {"batch_size": 32, "lr": 0.05, "steps": 10_000_000, "log_every": 10})
    try:
        w.wait_for(lambda s: any(job_metric([x], "loss") for x in s))
        command_id = w.command("checkpoint")
        seen = w.wait_for(
            lambda s: sum(m.get("type") == "failed" and m["id"] == command_id for _, m in s) == 2
        )
        errors = {m["error"] for _, m in seen if m.get("type") == "failed"}
        assert errors == {"the job names no checkpoint_dir (a hyper-parameter)"}
        w.applied_steps(w.command("stop"))
        assert [p.wait(timeout=60) for p in w.procs] == [0, 0]
    finally:
        w.close()


def rank_metric(seen, name):
    out: dict[int, dict[int, float]] = {}
    for _rank, m in seen:
        for p in m.get("points", []):
            if p["name"] == name and p.get("rank") is not None:
                out.setdefault(p["rank"], {})[p["step"]] = p["value"]
    return out


def test_sma_learns_and_switching_to_ssgd_makes_the_models_identical():
    w = Workers(
        2,
        {"batch_size": 64, "lr": 0.05, "steps": 10_000_000, "log_every": 10, "seed": 2},
        strategy="sma",
    )
    try:
        seen = w.wait_for(
            lambda s: any(step >= 300 for step, _ in job_metric(s, "loss")), timeout=120
        )
        losses = job_metric(seen, "loss")
        assert losses[-1][1] < 0.5 * losses[0][1]  # SMA learns
        sums = rank_metric(seen, "param_checksum")
        assert any(
            sums[0][s] != sums[1][s] for s in sums[0] if s in sums[1]
        )  # models differ under SMA
        switched = w.applied_steps(w.command("set_strategy", "ssgd"))
        assert switched[0] == switched[1]
        seen = w.wait_for(
            lambda s: (
                sum(
                    1
                    for r, m in s
                    for p in m.get("points", [])
                    if p["name"] == "param_checksum" and p["step"] > switched[0]
                )
                >= 10
            )
        )
        after = rank_metric(seen, "param_checksum")
        common = [s for s in after[0] if s in after.get(1, {}) and s > switched[0]]
        assert common and all(after[0][s] == after[1][s] for s in common)
        w.applied_steps(w.command("stop"))
        assert [p.wait(timeout=60) for p in w.procs] == [0, 0]
    finally:
        w.close()


def test_topology_switch_is_applied_by_every_worker_and_training_goes_on():
    w = Workers(
        3,
        {"batch_size": 48, "lr": 0.05, "steps": 10_000_000, "log_every": 10, "seed": 4},
        topology="ring",
    )
    try:
        w.wait_for(lambda s: any(job_metric([x], "loss") for x in s), timeout=120)
        for topology in ("tree", "star"):
            steps = w.applied_steps(w.command("set_topology", topology))
            assert len(set(steps.values())) == 1
            after = steps[0]
            seen = w.wait_for(
                lambda s, after=after: any(step > after + 20 for step, _ in job_metric(s, "loss"))
            )
            sums = rank_metric(seen, "param_checksum")
            common = [s for s in sums[0] if s > after and all(s in sums[r] for r in (1, 2))]
            assert common and all(sums[0][s] == sums[1][s] == sums[2][s] for s in common)
        w.applied_steps(w.command("stop"))
        assert [p.wait(timeout=60) for p in w.procs] == [0, 0, 0]
    finally:
        w.close()


def test_routed_ring_probes_its_paths_reports_them_and_training_goes_on():
    # Loopback: no path is slow, so the probe finds every ring alike and keeps rank order;
    # what is checked is that the switch, the probe (a collective of its own) and the
    # periodic re-probe line up on every worker, and that the models stay equal.
    w = Workers(
        3,
        {
            "batch_size": 48,
            "lr": 0.05,
            "steps": 10_000_000,
            "log_every": 10,
            "seed": 5,
            "ring_probe_every": 30,
        },
        topology="ring",
    )
    try:
        w.wait_for(lambda s: any(job_metric([x], "loss") for x in s), timeout=120)
        steps = w.applied_steps(w.command("set_topology", "routed_ring"))
        assert len(set(steps.values())) == 1
        after = steps[0]
        seen = w.wait_for(
            lambda s: len([st for st, _ in job_metric(s, "ring_hop_mbps") if st >= after]) >= 2,
            timeout=120,
        )
        probed = [st for st, _ in job_metric(seen, "ring_hop_mbps")]
        assert probed[0] == after and probed[1] - probed[0] >= 30  # on the switch, then again
        assert all(v > 0 for _, v in job_metric(seen, "link_mbps_min"))
        sums = rank_metric(seen, "param_checksum")
        common = [s for s in sums[0] if s > after and all(s in sums[r] for r in (1, 2))]
        assert common and all(sums[0][s] == sums[1][s] == sums[2][s] for s in common)
        back = w.applied_steps(w.command("set_topology", "ring"))
        assert len(set(back.values())) == 1
        w.wait_for(
            lambda s: any(step > back[0] + 10 for step, _ in job_metric(s, "loss")), timeout=120
        )
        w.applied_steps(w.command("stop"))
        assert [p.wait(timeout=60) for p in w.procs] == [0, 0, 0]
    finally:
        w.close()
