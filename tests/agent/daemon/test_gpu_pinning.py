"""Each worker owns one GPU (agent.daemon.gpu_pinning): real worker processes started by a
WorkerGroup see only their own GPU's UUID in CUDA_VISIBLE_DEVICES; two jobs never share a
GPU; the worker→GPU map is in the job's state file, so a restarted agent re-claims it
before giving GPUs to anything else. The GPUs are described, not real (none here)."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest

from agent import protocol
from agent.daemon.gpu_pinning import GpuPool, NoFreeGpu
from agent.daemon.workers import WorkerGroup
from agent.protocol.control import StartPayload

ENTRYPOINT = "tests.support.env_report_worker"
GPU_A = "GPU-3f1c2a4e-1000-7b2d-8c9e-1a2b3c4d5e00"
GPU_B = "GPU-3f1c2a4e-1001-7b2d-8c9e-1a2b3c4d5e01"


def _group(tmp_path, job_id: int, ranks: list[int], pool: GpuPool, **kwargs) -> WorkerGroup:
    async def command_done(*args) -> None:
        pass

    return WorkerGroup(
        job_id=job_id,
        start=StartPayload(
            job=job_id,
            world_size=len(ranks),
            ranks=tuple(ranks),
            entrypoint=ENTRYPOINT,
            hyperparameters={},
            batch_size=8,
            lr=0.1,
            strategy="ssgd",
            topology="auto",
            cluster_version=1,
            workers_min=len(ranks),
        ),
        python=sys.executable,
        address="127.0.0.1",
        state_dir=tmp_path / "state",
        first_seq=0,
        on_metrics=lambda points: None,
        on_command_done=command_done,
        gpu_pool=pool,
        **kwargs,
    )


async def _spawn_and_read_env(tmp_path, group: WorkerGroup) -> dict[int, dict]:
    group.choose_ports()
    await group.spawn([f"127.0.0.1:{group.ports[r]}" for r in group.ranks], 1)
    found: dict[int, dict] = {}
    deadline = time.monotonic() + 60
    while len(found) < len(group.ranks) and time.monotonic() < deadline:
        for rank in group.ranks:
            path = tmp_path / f"127.0.0.1_{group.ports[rank]}.json"
            if path.exists():
                found[rank] = json.loads(path.read_text())
        await asyncio.sleep(0.05)
    return found


def test_each_worker_of_a_job_sees_only_its_own_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("ENV_REPORT_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # what the agent inherited: replaced

    async def run():
        pool = GpuPool([GPU_A, GPU_B])
        group = _group(tmp_path, 7, [0, 1], pool, persist=False)
        env = await _spawn_and_read_env(tmp_path, group)
        await group.wait()
        return env, pool

    env, pool = asyncio.run(run())
    assert {env[0]["CUDA_VISIBLE_DEVICES"], env[1]["CUDA_VISIBLE_DEVICES"]} == {GPU_A, GPU_B}
    for rank in (0, 1):
        assert env[rank][protocol.ENV_GPU] == env[rank]["CUDA_VISIBLE_DEVICES"]
        assert env[rank]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert env[rank]["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert pool.holders == {}  # both exited: their GPUs are free again


def test_a_second_job_gets_the_other_gpu_and_a_third_is_refused_before_starting(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("ENV_REPORT_DIR", str(tmp_path))
    monkeypatch.setenv("ENV_REPORT_HOLD_S", "120")  # the workers run (and hold GPUs) until ended

    async def run():
        pool = GpuPool([GPU_A, GPU_B])
        first = _group(tmp_path, 1, [0], pool, persist=False)
        second = _group(tmp_path, 2, [0], pool, persist=False)
        first.choose_ports()
        # The first job's worker holds its GPU while it runs: claim as a launch does.
        await first.spawn([f"127.0.0.1:{first.ports[0]}"], 1)
        env = await _spawn_and_read_env(tmp_path, second)
        third = _group(tmp_path, 3, [0, 1], pool, persist=False)
        third.choose_ports()
        with pytest.raises(NoFreeGpu, match="0 of this node's 2 GPU"):
            await third.spawn([f"127.0.0.1:{third.ports[r]}" for r in (0, 1)], 1)
        assert third.workers == {}  # none of its workers started
        held = dict(pool.holders)
        for group in (first, second):
            await group.terminate(grace_s=1)
            await group.wait()
        assert pool.holders == {}
        return first.workers[0].gpu, env[0]["CUDA_VISIBLE_DEVICES"], held

    first_gpu, second_gpu, held = asyncio.run(run())
    assert {first_gpu, second_gpu} == {GPU_A, GPU_B}
    assert held == {first_gpu: (1, 0), second_gpu: (2, 0)}


def test_a_restarted_agent_re_claims_the_gpus_in_the_job_state(tmp_path):
    """The worker→GPU map is in jobs/job-<id>.json: an agent killed with -9 and started
    again holds those GPUs for the workers still running before a new job asks for one."""
    pool = GpuPool([GPU_A, GPU_B])
    group = _group(tmp_path, 5, [0], pool)
    worker_state = {
        "rank": 0,
        "port": 40000,
        "address": "127.0.0.1:40000",
        "joining": False,
        "pid": 2**22 + 1,  # a worker the previous agent started (alive or not: its watcher says)
        "start_time": 1,
        "gpu": GPU_B,
    }
    state = {**group.state(), "workers": [worker_state]}

    async def command_done(*args) -> None:
        pass

    new_pool = GpuPool([GPU_A, GPU_B])
    restored = WorkerGroup.restore(
        state,
        python=sys.executable,
        address="127.0.0.1",
        state_dir=tmp_path / "state",
        on_metrics=lambda points: None,
        on_command_done=command_done,
        gpu_pool=new_pool,
    )
    assert restored.workers[0].gpu == GPU_B
    assert new_pool.holders == {GPU_B: (5, 0)}
    assert new_pool.claim(6, 0) == GPU_A  # the next job gets the other one
    assert restored.state()["workers"][0]["gpu"] == GPU_B  # and it is written back


def test_a_worker_keeps_its_gpu_when_claimed_again():
    pool = GpuPool([GPU_A, GPU_B])
    assert pool.claim(1, 3, preferred=GPU_B) == GPU_B
    assert pool.claim(1, 3) == GPU_B  # a redelivered launch: the same GPU
    pool.release(1, 3)
    assert pool.free() == [GPU_A, GPU_B]


def test_a_node_without_gpus_pins_nothing():
    pool = GpuPool([])
    assert pool.claim(1, 0) is None
    pool.check_room(1, range(64))  # no limit from GPUs: slots decide


def test_a_grow_gives_each_joiner_a_gpu_of_its_own_and_the_members_keep_theirs(
    tmp_path, monkeypatch
):
    """A rescale: the members train on in the same processes on the same GPUs; each
    standby started for the grow claims a free one, and a grow beyond the GPUs starts none."""
    from agent.protocol.control import JoinerSpec, JoinPayload

    monkeypatch.setenv("ENV_REPORT_DIR", str(tmp_path))
    monkeypatch.setenv("ENV_REPORT_HOLD_S", "120")

    def join(ranks: list[int]) -> JoinPayload:
        return JoinPayload(
            cluster_version=1,
            members=("127.0.0.1:1",),
            workers_min=1,
            entrypoint=ENTRYPOINT,
            hyperparameters={},
            batch_size=8,
            lr=0.1,
            strategy="ssgd",
            topology="auto",
            workers=tuple(JoinerSpec(rank=r, cluster_rank=r) for r in ranks),
        )

    async def run():
        pool = GpuPool([GPU_A, GPU_B])
        group = _group(tmp_path, 9, [0], pool, persist=False)
        group.choose_ports()
        await group.spawn([f"127.0.0.1:{group.ports[0]}"], 1)
        member_gpu = group.workers[0].gpu
        assert await group.add_joiners(join([1]), seq=2) == [1]
        with pytest.raises(NoFreeGpu):
            await group.add_joiners(join([2]), seq=3)
        gpus = {r: w.gpu for r, w in group.workers.items()}
        await group.terminate(grace_s=1)
        await group.wait()
        return member_gpu, gpus

    member_gpu, gpus = asyncio.run(run())
    assert gpus == {0: member_gpu, 1: ({GPU_A, GPU_B} - {member_gpu}).pop()}
