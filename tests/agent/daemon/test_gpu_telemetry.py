"""What the agent makes of a GPU sample (agent.daemon.gpu_telemetry): each GPU's state
with its owner for the heartbeat, and gpu_util/gpu_mem points at the step its owner
reported last — per worker, and whole-job means where the node runs the job's rank 0."""

from __future__ import annotations

from agent.daemon.gpu_pinning import GpuPool
from agent.daemon.gpu_telemetry import gpu_points, gpu_stats
from agent.daemon.gpus import Gpu, GpuInventory, GpuSample
from agent.daemon.processes import LocalWorker

A = "GPU-3f1c2a4e-1000-7b2d-8c9e-1a2b3c4d5e00"
B = "GPU-3f1c2a4e-1001-7b2d-8c9e-1a2b3c4d5e01"
C = "GPU-3f1c2a4e-1002-7b2d-8c9e-1a2b3c4d5e02"
INVENTORY = GpuInventory(
    gpus=tuple(Gpu(i, u, "NVIDIA A100-SXM4-80GB", 80000) for i, u in enumerate((A, B, C))),
    driver="535.183.01",
    source="nvidia-smi",
)
SAMPLES = [
    GpuSample(A, utilization_pct=90.0, memory_used_mib=40000.0, temperature_c=60.0, power_w=300.0),
    GpuSample(B, utilization_pct=50.0, memory_used_mib=20000.0, temperature_c=50.0, power_w=200.0),
    GpuSample(C, utilization_pct=0.0, memory_used_mib=None, temperature_c=30.0, power_w=60.0),
]


def _worker(rank: int, step: int | None) -> LocalWorker:
    return LocalWorker(
        rank=rank, port=1, address=f"10.0.0.1:{rank}", pid=100 + rank, last_step=step
    )


def test_each_gpu_is_reported_with_its_sample_and_owner():
    pool = GpuPool([A, B, C])
    pool.claim(7, 0)
    stats = gpu_stats(INVENTORY, SAMPLES, pool)
    assert [(s.uuid, s.job, s.rank) for s in stats] == [(A, 7, 0), (B, None, None), (C, None, None)]
    assert stats[0].memory_total_mib == 80000.0 and stats[0].power_w == 300.0
    assert stats[2].memory_used_mib is None


def test_owners_get_gpu_util_and_gpu_mem_at_their_last_step():
    pool = GpuPool([A, B, C])
    pool.claim(7, 0)
    pool.claim(7, 1)
    pool.claim(8, 0)  # a worker that has reported no step yet: nothing for it
    stats = gpu_stats(INVENTORY, SAMPLES, pool)
    jobs = {
        # Worker number 1 is rank 0 in the job's latest version (it rescaled).
        7: ({0: _worker(0, 120), 1: _worker(1, 110)}, ["10.0.0.1:1", "10.0.0.1:0"]),
        8: ({0: _worker(0, None)}, ["10.0.0.1:0"]),
    }
    points = gpu_points(stats, jobs, now=1.0)
    got = {(p.job, p.rank, p.name): (p.step, p.value) for p in points}
    assert got == {
        (7, 1, "gpu_util"): (120, 90.0),  # at its rank in the version, as its own series
        (7, 1, "gpu_mem"): (120, 50.0),
        (7, 0, "gpu_util"): (110, 50.0),
        (7, 0, "gpu_mem"): (110, 25.0),
        (7, None, "gpu_util"): (120, 70.0),  # whole-job: the mean over this node's workers
        (7, None, "gpu_mem"): (120, 37.5),
    }


def test_a_node_without_the_jobs_rank_0_writes_no_whole_job_point():
    pool = GpuPool([A])
    pool.claim(7, 3)
    jobs = {7: ({3: _worker(3, 5)}, ["10.0.0.2:0", "10.0.0.1:3"])}
    points = gpu_points(gpu_stats(INVENTORY, SAMPLES, pool), jobs)
    assert {(p.rank, p.name) for p in points} == {(1, "gpu_util"), (1, "gpu_mem")}


def test_a_standby_not_yet_in_the_version_gets_no_points():
    pool = GpuPool([A])
    pool.claim(7, 2)
    jobs = {7: ({2: _worker(2, 5)}, ["10.0.0.2:0"])}
    assert gpu_points(gpu_stats(INVENTORY, SAMPLES, pool), jobs) == []
