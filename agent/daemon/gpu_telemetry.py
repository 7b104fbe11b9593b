"""What the agent tells the control plane about its GPUs: each GPU's state with every
heartbeat (stored on the node, shown on the nodes page), and the ``gpu_util`` and
``gpu_mem`` series of the workers that own one (shown on the job page, read by policies).

The agent samples the GPUs itself (NVML or nvidia-smi, :func:`agent.daemon.gpus.sample`),
so a worker needs no NVML binding; it knows which worker owns which GPU
(:mod:`agent.daemon.gpu_pinning`) and the step each worker reported last, and writes
each owner's points at that step. Per worker: its GPU's utilisation and memory in use,
both in percent. Whole-job: the agent that runs the job's rank 0 writes the mean over its
own workers of the job (one node's view: the other nodes' GPUs are in the per-worker
series).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from agent.daemon.gpu_pinning import GpuPool
from agent.daemon.gpus import GpuInventory, GpuSample
from agent.daemon.processes import LocalWorker
from agent.protocol.rest import GpuStat
from agent.protocol.worker import MetricPoint

GPU_UTIL = "gpu_util"
GPU_MEM = "gpu_mem"


def gpu_stats(
    inventory: GpuInventory, samples: Sequence[GpuSample], pool: GpuPool
) -> tuple[GpuStat, ...]:
    """Each GPU of the inventory with its latest sample and its owner."""
    by_uuid = {s.uuid: s for s in samples}
    stats = []
    for gpu in inventory.gpus:
        s = by_uuid.get(gpu.uuid)
        owner = pool.holders.get(gpu.uuid)
        stats.append(
            GpuStat(
                uuid=gpu.uuid,
                name=gpu.name,
                memory_total_mib=float(gpu.memory_mib) if gpu.memory_mib else None,
                utilization_pct=s.utilization_pct if s else None,
                memory_used_mib=s.memory_used_mib if s else None,
                temperature_c=s.temperature_c if s else None,
                power_w=s.power_w if s else None,
                job=owner[0] if owner else None,
                rank=owner[1] if owner else None,
            )
        )
    return tuple(stats)


def _percent(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return 100.0 * part / whole


def gpu_points(
    stats: Sequence[GpuStat],
    workers: Mapping[int, Mapping[int, LocalWorker]],
    rank0_jobs: set[int],
    now: float | None = None,
) -> list[MetricPoint]:
    """``gpu_util``/``gpu_mem`` points of each worker that owns a GPU and reported a step
    (``workers``: job → worker number → worker); whole-job means for ``rank0_jobs``."""
    now = time.time() if now is None else now
    points: list[MetricPoint] = []
    per_job: dict[int, list[tuple[int, dict[str, float]]]] = {}
    for stat in stats:
        if stat.job is None or stat.rank is None:
            continue
        worker = workers.get(stat.job, {}).get(stat.rank)
        if worker is None or worker.last_step is None or not worker.alive:
            continue
        values = {
            GPU_UTIL: stat.utilization_pct,
            GPU_MEM: _percent(stat.memory_used_mib, stat.memory_total_mib),
        }
        known = {name: value for name, value in values.items() if value is not None}
        points.extend(
            MetricPoint(
                name=name,
                step=worker.last_step,
                value=value,
                time=now,
                rank=stat.rank,
                job=stat.job,
            )
            for name, value in known.items()
        )
        per_job.setdefault(stat.job, []).append((worker.last_step, known))
    for job, entries in per_job.items():
        if job not in rank0_jobs:
            continue
        step = max(step for step, _ in entries)
        for name in (GPU_UTIL, GPU_MEM):
            seen = [known[name] for _, known in entries if name in known]
            if seen:
                points.append(
                    MetricPoint(
                        name=name, step=step, value=sum(seen) / len(seen), time=now, job=job
                    )
                )
    return points
