"""HTTP calls from the agent to the control plane's ``/api/v1/agent/`` endpoints
(standard library only, run in threads), with the typed bodies of
:mod:`agent.protocol.rest`."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, TypeVar

from agent.protocol import ProtocolError
from agent.protocol.base import Message
from agent.protocol.rest import (
    ClusterSpec,
    Enrolment,
    EnrolRequest,
    Heartbeat,
    HeartbeatReply,
    JobReport,
    MetricBatch,
    MetricBatchReply,
    WorkerPort,
    WorkersRegistration,
)
from agent.protocol.worker import MetricPoint

M = TypeVar("M", bound=Message)


class ControlPlaneError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class ControlPlaneClient:
    def __init__(self, server: str, credential: str | None = None, timeout_s: float = 10.0):
        self.server = server.rstrip("/")
        self.credential = credential
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.credential:
            request.add_header("Authorization", f"Node {self.credential}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message", exc.reason)
            except (ValueError, AttributeError):
                message = str(exc.reason)
            raise ControlPlaneError(exc.code, message) from None

    async def _call(self, method: str, path: str, body: Message | None, reply: type[M]) -> M:
        raw = await asyncio.to_thread(
            self._request, method, path, None if body is None else body.to_dict()
        )
        try:
            return reply.from_dict(raw)
        except ProtocolError as exc:
            # A reply the agent cannot read counts as a server error: it tries again later.
            raise ControlPlaneError(502, f"unexpected reply to {method} {path}: {exc}") from None

    async def enrol(
        self,
        *,
        join_token: str,
        name: str,
        address: str,
        slots: int,
        labels: dict[str, str] | None = None,
    ) -> Enrolment:
        request = EnrolRequest(
            join_token=join_token, name=name, address=address, slots=slots, labels=labels or {}
        )
        return await self._call("POST", "/api/v1/agent/enrol/", request, Enrolment)

    async def heartbeat(self, running_jobs: Sequence[int] | None = None) -> HeartbeatReply:
        body = Heartbeat(jobs=None if running_jobs is None else tuple(running_jobs))
        return await self._call("POST", "/api/v1/agent/heartbeat/", body, HeartbeatReply)

    async def send_metrics(self, batch_id: str, points: Sequence[MetricPoint]) -> MetricBatchReply:
        body = MetricBatch(batch_id=batch_id, points=tuple(points))
        return await self._call("POST", "/api/v1/agent/metrics/", body, MetricBatchReply)

    async def register_workers(self, job_id: int, workers: Sequence[WorkerPort]) -> ClusterSpec:
        body = WorkersRegistration(workers=tuple(workers))
        return await self._call("POST", f"/api/v1/agent/jobs/{job_id}/workers/", body, ClusterSpec)

    async def cluster_spec(self, job_id: int) -> ClusterSpec:
        return await self._call("GET", f"/api/v1/agent/jobs/{job_id}/cluster/", None, ClusterSpec)

    async def report_job(self, job_id: int, report: JobReport) -> None:
        path = f"/api/v1/agent/jobs/{job_id}/report/"
        await asyncio.to_thread(self._request, "POST", path, report.to_dict())
