"""Metric points from the workers, buffered and posted to the control plane in batches.

A batch keeps its id across retries until the control plane stored it, so a retry is
never counted twice; points wait in the buffer (the oldest dropped beyond a limit) while
the control plane cannot be reached.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from adaptrain.rest import ApiError
from agent.daemon.client import ControlPlaneClient
from agent.protocol.worker import MetricPoint

log = logging.getLogger("agent")

MAX_BUFFERED_POINTS = 200_000
MAX_BATCH_POINTS = 5_000


class MetricShipper:
    def __init__(self, client: ControlPlaneClient, flush_s: float):
        self.client = client
        self.flush_s = flush_s
        self.points: list[MetricPoint] = []
        self._lock = asyncio.Lock()

    def add(self, points: list[MetricPoint]) -> None:
        self.points.extend(points)
        overflow = len(self.points) - MAX_BUFFERED_POINTS
        if overflow > 0:
            log.warning("metric buffer full: dropping the %d oldest points", overflow)
            del self.points[:overflow]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        while self.points:
            batch = self.points[:MAX_BATCH_POINTS]
            batch_id = uuid.uuid4().hex
            for attempt in range(8):
                try:
                    await self.client.send_metrics(batch_id, batch)
                    break
                except ApiError as exc:
                    if 400 <= exc.status < 500:
                        log.error("metric batch rejected (%s); dropping %d points", exc, len(batch))
                        break
                    await asyncio.sleep(min(0.2 * 2**attempt, 5))
                except OSError as exc:
                    log.warning("metric upload failed (%s); retrying", exc)
                    await asyncio.sleep(min(0.2 * 2**attempt, 5))
            else:
                return  # keep the points; the next flush tries again
            del self.points[: len(batch)]
