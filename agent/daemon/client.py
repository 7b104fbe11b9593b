"""HTTP calls from the agent to the control plane's ``/api/v1/agent/`` endpoints, through
the one REST client (:mod:`adaptrain.rest`, run in threads) with the typed bodies of
:mod:`agent.protocol.rest`. An HTTP error is :class:`adaptrain.rest.ApiError` (``status``
tells a refusal from a server error); no answer at all is
:class:`adaptrain.rest.Unreachable`, an ``OSError``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib import metadata
from typing import TypeVar

from adaptrain.rest import NODE_SCHEME, ApiError, RestClient
from agent.protocol import PROTOCOL_VERSION, ProtocolError
from agent.protocol.base import Message
from agent.protocol.control import HEADER_AGENT_VERSION, HEADER_PROTOCOL
from agent.protocol.rest import (
    ClusterSpec,
    Enrolment,
    EnrolRequest,
    Goodbye,
    GpuStat,
    Heartbeat,
    HeartbeatReply,
    JobReport,
    LogBatch,
    LogBatchReply,
    MetricBatch,
    MetricBatchReply,
    WorkerPort,
    WorkersRegistration,
)
from agent.protocol.worker import MetricPoint

M = TypeVar("M", bound=Message)


def agent_version() -> str:
    """The installed package's version (``unknown`` when run from a source tree)."""
    try:
        return metadata.version("adaptrain")
    except metadata.PackageNotFoundError:
        return "unknown"


def channel_headers(credential: str) -> dict[str, str]:
    """The headers the agent opens ``/ws/agent/`` with: its credential, protocol and version."""
    return {
        "Authorization": f"{NODE_SCHEME} {credential}",
        HEADER_PROTOCOL: str(PROTOCOL_VERSION),
        HEADER_AGENT_VERSION: agent_version(),
    }


class ControlPlaneClient(RestClient):
    """The shared REST client with the node's credential and the agent's typed calls.
    Enrolment and heartbeats say the agent's version and the protocol it speaks."""

    def __init__(
        self,
        server: str,
        credential: str | None = None,
        timeout_s: float = 10.0,
        code: tuple[str, ...] | None = None,
    ):
        # A 503 (the control plane's database or broker is down) is retried briefly here,
        # honouring Retry-After; the agent's own loops retry beyond that.
        super().__init__(
            server,
            credential,
            scheme=NODE_SCHEME,
            timeout_s=timeout_s,
            unavailable_retry_s=15.0,
        )
        self.version = agent_version()
        self.code = code  # the kinds of code the node runs (AGENT_CODE), said with each call

    async def _call(self, method: str, path: str, body: Message | None, reply: type[M]) -> M:
        raw = await asyncio.to_thread(
            self.call, method, path, None if body is None else body.to_dict()
        )
        try:
            return reply.from_dict(raw)
        except ProtocolError as exc:
            # A reply the agent cannot read counts as a server error: it tries again later.
            raise ApiError(502, f"unexpected reply: {exc}", method=method, path=path) from None

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
            join_token=join_token,
            name=name,
            address=address,
            slots=slots,
            labels=labels or {},
            agent_version=self.version,
            protocol=PROTOCOL_VERSION,
            code=self.code,
        )
        return await self._call("POST", "/api/v1/agent/enrol/", request, Enrolment)

    async def heartbeat(
        self, running_jobs: Sequence[int] | None = None, gpus: Sequence[GpuStat] | None = None
    ) -> HeartbeatReply:
        body = Heartbeat(
            jobs=None if running_jobs is None else tuple(running_jobs),
            gpus=None if gpus is None else tuple(gpus),
            agent_version=self.version,
            protocol=PROTOCOL_VERSION,
            code=self.code,
        )
        return await self._call("POST", "/api/v1/agent/heartbeat/", body, HeartbeatReply)

    async def goodbye(self, reason: str, detached: Sequence[int] = ()) -> None:
        """Tell the control plane this agent stops on purpose (its node goes offline now,
        not lost after the heartbeat timeout)."""
        body = Goodbye(reason=reason, detached=tuple(detached))
        await asyncio.to_thread(self.call, "POST", "/api/v1/agent/goodbye/", body.to_dict())

    async def leave(self, reason: str) -> list[int]:
        """Ask the control plane to drain this node and shrink its elastic jobs' workers away
        (``POST agent/leave/``); returns the jobs it could not shrink."""
        body = Goodbye(reason=reason)
        reply = await asyncio.to_thread(self.call, "POST", "/api/v1/agent/leave/", body.to_dict())
        return [int(j) for j in (reply or {}).get("kept") or []]

    async def send_metrics(self, batch_id: str, points: Sequence[MetricPoint]) -> MetricBatchReply:
        body = MetricBatch(batch_id=batch_id, points=tuple(points))
        return await self._call("POST", "/api/v1/agent/metrics/", body, MetricBatchReply)

    async def send_logs(self, batch: LogBatch) -> LogBatchReply:
        return await self._call("POST", "/api/v1/agent/logs/", batch, LogBatchReply)

    async def register_workers(self, job_id: int, workers: Sequence[WorkerPort]) -> ClusterSpec:
        body = WorkersRegistration(workers=tuple(workers))
        return await self._call("POST", f"/api/v1/agent/jobs/{job_id}/workers/", body, ClusterSpec)

    async def cluster_spec(self, job_id: int) -> ClusterSpec:
        return await self._call("GET", f"/api/v1/agent/jobs/{job_id}/cluster/", None, ClusterSpec)

    async def fetch_bundle(self, digest: str, *, limit_bytes: int) -> bytes:
        """The archive of code bundle ``digest`` (a job this node runs names it); the
        caller checks the digest. A download of a large bundle gets more time."""
        path = f"/api/v1/agent/bundles/{digest}/"
        fetcher = RestClient(
            self.server, self.credential, scheme=NODE_SCHEME, timeout_s=max(self.timeout_s, 120.0)
        )
        return await asyncio.to_thread(fetcher.download, path, limit_bytes=limit_bytes)

    async def report_job(self, job_id: int, report: JobReport) -> None:
        path = f"/api/v1/agent/jobs/{job_id}/report/"
        await asyncio.to_thread(self.call, "POST", path, report.to_dict())
