"""Elastic training on the PyTorch runtime, checked as the TensorFlow runtime's is
(test_elastic_training.py): a job grows 2→3 from a warm standby and shrinks back to 2
without restarting the survivors, live commands change batch size, learning rate and
strategy at one step boundary, and a worker killed with SIGKILL leaves a run that
finishes — without skipping or repeating a sample within an epoch and with every member
holding the same model."""

from __future__ import annotations

import numpy as np
import pytest

from agent.local import LocalJob
from tests.agent.runtime.test_elastic_training import (
    BATCH,
    FOREVER,
    check_coverage,
    checksums_by_step,
    reached,
    trained_steps,
)

pytestmark = pytest.mark.timeout(400)

WORKER = "tests.support.elastic_worker_torch"


def test_grow_from_standby_then_shrink_keeps_data_coverage_and_lock_step(tmp_path):
    with LocalJob(
        WORKER,
        FOREVER,
        workers=2,
        batch_size=BATCH,
        lr=0.05,
        env={"ELASTIC_LOG_DIR": str(tmp_path)},
    ) as job:
        first = list(job.members)
        job.wait_for(reached(20))
        standby = job.start_standby(1)
        job.wait_standby(standby)
        job.announce(first + standby)
        rescaled = [
            job.wait_for(lambda a, m: m["type"] == "rescaled" and m["version"] == 1)
            for _ in range(3)
        ]
        assert {a for a, _ in rescaled} == set(first + standby)
        assert {m["size"] for _, m in rescaled} == {3}
        grow_step = rescaled[0][1]["step"]
        job.wait_for(reached(grow_step + 30))
        job.shrink(1)
        _, left = job.wait_for(lambda a, m: m["type"] == "left")
        assert left["version"] == 2
        _, rescaled = job.wait_for(lambda a, m: m["type"] == "rescaled" and m["version"] == 2)
        job.wait_for(reached(rescaled["step"] + 30))
        job.command("stop")
        codes = job.wait(300)
    assert all(code == 0 for code in codes.values()), codes
    assert codes.keys() == set(first + standby)
    log = trained_steps(tmp_path)
    steps = check_coverage(log)
    sizes = [log[s][0]["size"] for s in range(steps)]
    assert sizes[0] == 2 and 3 in sizes and sizes[-1] == 2
    sums = checksums_by_step(job)
    assert sums and all(len(values) == 1 for values in sums.values()), sums


def applied_at(job: LocalJob, command_id: int, members: list[str]) -> set[int]:
    """The step at which each member applied command ``command_id`` (waits for all)."""
    steps = set()
    for _ in members:
        _, reply = job.wait_for(lambda a, m: m["type"] == "applied" and m["id"] == command_id)
        steps.add(reply["step"])
    return steps


def test_live_batch_size_lr_and_strategy_changes_apply_at_one_step_on_every_worker(tmp_path):
    with LocalJob(
        WORKER,
        {**FOREVER, "lr_scaling": "sqrt"},
        workers=2,
        batch_size=BATCH,
        lr=0.05,
        env={"ELASTIC_LOG_DIR": str(tmp_path)},
    ) as job:
        members = list(job.members)
        job.wait_for(reached(10))
        assert len(applied_at(job, job.command("set_batch_size", 4 * BATCH), members)) == 1
        # The sqrt rule: 4× the batch, 2× the learning rate.
        job.wait_for(
            lambda a, m: (
                m["type"] == "metrics"
                and any(p["name"] == "lr" and p["value"] == pytest.approx(0.1) for p in m["points"])
            )
        )
        assert len(applied_at(job, job.command("set_strategy", "sma"), members)) == 1
        job.wait_for(reached(40))
        (back,) = applied_at(job, job.command("set_strategy", "ssgd"), members)
        job.wait_for(reached(back + 20))
        job.command("stop")
        codes = job.wait(300)
    assert all(code == 0 for code in codes.values()), codes
    log = trained_steps(tmp_path)
    # Each worker's share of the 4× batch (smaller only at the end of an epoch).
    assert max(len(log[s][0]["samples"]) for s in range(back, len(log))) == 2 * BATCH
    # Back on S-SGD the models are averaged once and move together from then on. A
    # command applied at step N is applied at the boundary after step N's report: the
    # checksum reported at N itself is still from before the averaging.
    sums = checksums_by_step(job)
    assert all(len(values) == 1 for step, values in sums.items() if step > back), sums


def test_worker_killed_with_sigkill_leaves_a_run_that_finishes(tmp_path):
    with LocalJob(
        WORKER,
        {**FOREVER, "rejoin_timeout_s": 60},
        workers=3,
        batch_size=BATCH,
        lr=0.05,
        env={"ELASTIC_LOG_DIR": str(tmp_path), "COLLECTIVE_TIMEOUT": "10"},
    ) as job:
        victim = job.members[1]
        job.wait_for(reached(30))
        job.kill(victim)
        _, failed = job.wait_for(lambda a, m: m["type"] == "peer_failed")
        assert failed["version"] == 0 and failed["error"]
        _, rescaled = job.wait_for(lambda a, m: m["type"] == "rescaled" and m["version"] == 1)
        assert rescaled["size"] == 2
        job.wait_for(reached(rescaled["step"] + 30))
        job.command("stop")
        codes = job.wait(300)
    assert codes[victim] != 0
    assert [code for address, code in codes.items() if address != victim] == [0, 0], codes
    log = trained_steps(tmp_path)
    retaken = 0
    for records in log.values():
        last = max(r["version"] for r in records)
        retaken += any(r["version"] < last for r in records)
        records[:] = [r for r in records if r["version"] == last]
    assert retaken <= 1
    steps = check_coverage(log, killed_rank=1)
    assert log[steps - 1][0]["size"] == 2
    sums = checksums_by_step(job)
    assert all(len(values) == 1 for step, values in sums.items() if step > 40), sums
    assert np.isfinite(list(next(iter(sums.values()))))
