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
    jobs: Mapping[int, tuple[Mapping[int, LocalWorker], Sequence[str]]],
    now: float | None = None,
) -> list[MetricPoint]:
    """``gpu_util``/``gpu_mem`` points of each worker that owns a GPU, is a member of its
    job's latest cluster version and reported a step (``jobs``: job → (worker number →
    worker, the version's members)), at the worker's rank in that version, as its own
    series are; whole-job means for the jobs whose rank 0 runs here."""
    now = time.time() if now is None else now
    points: list[MetricPoint] = []
    per_job: dict[int, list[tuple[int, dict[str, float]]]] = {}
    for stat in stats:
        if stat.job is None or stat.rank is None or stat.job not in jobs:
            continue
        workers, members = jobs[stat.job]
        worker = workers.get(stat.rank)
        if worker is None or worker.last_step is None or not worker.alive:
            continue
        if worker.address not in members:
            continue  # a standby: not in the job's series yet
        values = {
            GPU_UTIL: stat.utilization_pct,
            GPU_MEM: _percent(stat.memory_used_mib, stat.memory_total_mib),
        }
        known = {name: value for name, value in values.items() if value is not None}
        rank = list(members).index(worker.address)
        points.extend(
            MetricPoint(
                name=name, step=worker.last_step, value=value, time=now, rank=rank, job=stat.job
            )
            for name, value in known.items()
        )
        per_job.setdefault(stat.job, []).append((worker.last_step, known))
    for job, entries in per_job.items():
        workers, members = jobs[job]
        if not any(w.address == members[0] for w in workers.values()):
            continue  # another node runs rank 0: it writes the whole-job points
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
