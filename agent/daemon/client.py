"""HTTP calls from the agent to the control plane (stdlib only, run in threads)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any


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

    async def post(self, path: str, body: Any) -> Any:
        return await asyncio.to_thread(self._request, "POST", path, body)

    async def get(self, path: str) -> Any:
        return await asyncio.to_thread(self._request, "GET", path)

    async def register_workers(self, job_id: int, workers: list[dict]) -> dict:
        return await self.post(f"/api/v1/agent/jobs/{job_id}/workers/", {"workers": workers})

    async def cluster_spec(self, job_id: int) -> dict:
        return await self.get(f"/api/v1/agent/jobs/{job_id}/cluster/")

    async def enrol(
        self,
        *,
        join_token: str,
        name: str,
        address: str,
        slots: int,
        labels: dict[str, str] | None = None,
    ) -> dict:
        return await self.post(
            "/api/v1/agent/enrol/",
            {
                "join_token": join_token,
                "name": name,
                "address": address,
                "slots": slots,
                "labels": labels or {},
            },
        )

    async def heartbeat(self, running_jobs: list[int] | None = None) -> dict:
        body = {} if running_jobs is None else {"jobs": running_jobs}
        return await self.post("/api/v1/agent/heartbeat/", body)

    async def send_metrics(self, batch_id: str, points: list[dict]) -> dict:
        return await self.post("/api/v1/agent/metrics/", {"batch_id": batch_id, "points": points})

    async def report_job(
        self, job_id: int, status: str, *, reason: str = "", workers: list[dict] | None = None
    ) -> dict:
        body: dict[str, Any] = {"status": status, "reason": reason}
        if workers is not None:
            body["workers"] = workers
        return await self.post(f"/api/v1/agent/jobs/{job_id}/report/", body)
