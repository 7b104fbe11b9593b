"""Which GPU each worker on this node owns: one GPU per worker, never shared by two jobs.

The agent holds one :class:`GpuPool` over the GPUs it may use (``AGENT_GPUS``,
:mod:`agent.daemon.gpus`). A worker claims a free GPU when it is launched and is started
with ``CUDA_VISIBLE_DEVICES`` set to that GPU's UUID (never an index: indices change with
masking and ``CUDA_DEVICE_ORDER``), so the frameworks see exactly one device, as
``cuda:0`` / ``/GPU:0``. The UUID is part of the worker's state in the job's state file
(:mod:`agent.daemon.workers`), so an agent restarted after a crash re-claims the GPUs its
workers still run on before it places anything else, and a worker keeps its GPU across
every rescale (its process goes on; joiners claim GPUs of their own). The GPU is free
again once the worker has exited.

A node without GPUs has an empty pool: nothing is claimed and workers run as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

from agent import protocol

log = logging.getLogger(__name__)

# Environment of a pinned worker besides CUDA_VISIBLE_DEVICES: TensorFlow allocates
# memory as it needs it instead of all of the GPU at start-up (it would not matter with one
# worker per GPU, but a user's evaluation process or a profiler may share it); PyTorch's
# allocator grows its segments instead of fragmenting on changing batch sizes — the
# adaptive batch size does change them.
MEMORY_GROWTH_ENV = {
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
}

Holder = tuple[int, int]  # (job id, worker number in the job)


class NoFreeGpu(ValueError):
    """Every GPU of this node is held by a worker: the message says by which."""


class GpuPool:
    """The GPUs this agent may give to workers and who holds each."""

    def __init__(self, uuids: Sequence[str]):
        self.uuids = tuple(uuids)
        self.holders: dict[str, Holder] = {}

    def __bool__(self) -> bool:
        return bool(self.uuids)

    def free(self) -> list[str]:
        return [u for u in self.uuids if u not in self.holders]

    def held_by(self, job_id: int, rank: int) -> str | None:
        for uuid, holder in self.holders.items():
            if holder == (job_id, rank):
                return uuid
        return None

    def _describe_holders(self) -> str:
        return ", ".join(
            f"{uuid} by job {job} worker {rank}" for uuid, (job, rank) in self.holders.items()
        )

    def check_room(self, job_id: int, ranks: Iterable[int]) -> None:
        """Raise :class:`NoFreeGpu` unless each of ``ranks`` (of job ``job_id``) can have a
        GPU of its own: before a job's workers start, so that none starts when one cannot."""
        if not self.uuids:
            return
        needed = [r for r in ranks if self.held_by(job_id, r) is None]
        if len(needed) > len(self.free()):
            raise NoFreeGpu(
                f"job {job_id} needs a GPU for each of {len(needed)} worker(s) here, but "
                f"{len(self.free())} of this node's {len(self.uuids)} GPU(s) are free "
                f"(held: {self._describe_holders() or 'none'}); a worker never shares a GPU: "
                f"AGENT_SLOTS should not exceed the GPU count"
            )

    def claim(self, job_id: int, rank: int, preferred: str | None = None) -> str | None:
        """A GPU for worker ``rank`` of job ``job_id`` (the one it holds already, else
        ``preferred`` when free, else the first free one); None on a node without GPUs."""
        if not self.uuids:
            return None
        held = self.held_by(job_id, rank)
        if held is not None:
            return held
        free = self.free()
        if not free:
            self.check_room(job_id, [rank])
        uuid = preferred if preferred in free else free[0]
        self.holders[uuid] = (job_id, rank)
        return uuid

    def hold(self, job_id: int, rank: int, uuid: str) -> None:
        """Record that a worker a previous agent started runs on ``uuid`` (re-attach). A
        GPU no longer among AGENT_GPUS stays the worker's until it exits: it uses it."""
        other = self.holders.get(uuid)
        if other is not None and other != (job_id, rank):
            log.error(
                "GPU %s is in the state of job %s worker %s and of job %s worker %s; "
                "both run on it until one exits",
                uuid,
                other[0],
                other[1],
                job_id,
                rank,
            )
            return
        self.holders[uuid] = (job_id, rank)

    def release(self, job_id: int, rank: int) -> None:
        uuid = self.held_by(job_id, rank)
        if uuid is not None:
            del self.holders[uuid]


def pinned_env(uuid: str) -> dict[str, str]:
    """The environment that gives a worker GPU ``uuid`` and no other."""
    env = {
        "CUDA_VISIBLE_DEVICES": uuid,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        protocol.ENV_GPU: uuid,
    }
    for name, value in MEMORY_GROWTH_ENV.items():
        env[name] = os.environ.get(name) or value  # the node owner's own setting wins
    return env
