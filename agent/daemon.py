"""The agent daemon: enrol, heartbeat, take commands, run workers, ship metrics.

Three loops run side by side:

* **heartbeat** — ``POST /api/v1/agent/heartbeat/`` every ``AGENT_HEARTBEAT_S``;
* **command channel** — a WebSocket to ``/ws/agent/``, reconnected with exponential
  backoff and jitter. Each command is acked on receipt and remembered by id, so a
  command redelivered after a reconnect is acked again but applied once;
* **metrics** — points from workers are buffered and posted in batches; a batch keeps
  its id until the control plane stored it, so a retry is never counted twice.

Elastic jobs: a ``scale_workers`` command whose payload has ``join`` starts warm
standbys here; ``cluster`` frames (new cluster versions) are forwarded to the job's
workers; what workers say about membership (``standby``, ``rescaled``, ``left``,
``peer_failed``) and the death of a worker the job can do without (``exited``) go back
as ``{"type": "worker", "job", "rank", "event", ...}`` frames.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import uuid

import websockets

from agent.client import ControlPlaneClient, ControlPlaneError
from agent.config import AgentConfig
from agent.workers import CRASHED, LEFT, WorkerGroup

log = logging.getLogger("agent")

MAX_BUFFERED_POINTS = 200_000
MAX_BATCH_POINTS = 5_000
RENDEZVOUS_TIMEOUT_S = 120.0


class Agent:
    def __init__(self, config: AgentConfig):
        self.config = config
        self.client = ControlPlaneClient(config.server)
        self.groups: dict[int, WorkerGroup] = {}
        self.seen_commands: set[int] = set()
        self.outbox: asyncio.Queue[dict] = asyncio.Queue()
        self.points: list[dict] = []
        self.stopping = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []

    # -- enrolment ---------------------------------------------------------------------
    async def ensure_credential(self) -> None:
        path = self.config.credential_file
        if path.exists():
            self.client.credential = path.read_text().strip()
            try:
                await self.client.heartbeat()
                return
            except ControlPlaneError as exc:
                if exc.status != 401 and exc.status != 403:
                    raise
                log.warning("stored node credential was rejected; enrolling again")
        if not self.config.join_token:
            raise SystemExit("This node is not enrolled: set AGENT_JOIN_TOKEN to a join token "
                             "(create one with: python manage.py create_join_token).")
        reply = await self.client.enrol(join_token=self.config.join_token, name=self.config.name,
                                        address=self.config.address, slots=self.config.slots,
                                        labels=self.config.labels)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(reply["credential"])
        self.client.credential = reply["credential"]
        log.info("enrolled as node %s (id %s)", reply["name"], reply["node"])

    # -- loops -------------------------------------------------------------------------
    async def run(self) -> None:
        await self.ensure_credential()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._command_loop(), name="commands"),
            asyncio.create_task(self._metrics_loop(), name="metrics"),
        ]
        await self.stopping.wait()
        log.info("shutting down: stopping %d job(s)", len(self.groups))
        for job_id, group in list(self.groups.items()):
            group.shutting_down = True
            await group.terminate()
            await self._report(job_id, "failed", reason=f"the agent on node {self.config.name} shut down")
        await self._flush_metrics()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self.client.heartbeat(sorted(self.groups))
            except (ControlPlaneError, OSError) as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.config.heartbeat_s)

    async def _command_loop(self) -> None:
        delay = 0.5
        headers = {"Authorization": f"Node {self.client.credential}"}
        while True:
            try:
                async with websockets.connect(self.config.ws_url, additional_headers=headers,
                                              open_timeout=10, ping_interval=20) as ws:
                    log.info("command channel connected")
                    delay = 0.5
                    sender = asyncio.create_task(self._send_outbox(ws))
                    try:
                        async for raw in ws:
                            await self._on_frame(ws, json.loads(raw))
                    finally:
                        sender.cancel()
            except (OSError, websockets.WebSocketException, asyncio.TimeoutError) as exc:
                log.warning("command channel down (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 15.0)

    async def _send_outbox(self, ws) -> None:
        while True:
            frame = await self.outbox.get()
            try:
                await ws.send(json.dumps(frame))
            except Exception:
                # Keep it for the next connection: an 'applied' report must not be lost.
                self.outbox.put_nowait(frame)
                raise

    async def _on_frame(self, ws, frame: dict) -> None:
        if frame.get("type") == "error":
            log.warning("control plane says: %s", frame.get("message"))
            return
        if frame.get("type") == "cluster":
            group = self.groups.get(frame.get("job"))
            if group is not None and await group.apply_cluster(
                    int(frame["version"]), list(frame["members"]), workers_min=frame.get("workers_min")):
                log.info("job %s: cluster version %s with %d member(s)", frame["job"], frame["version"],
                         len(frame["members"]))
            return
        if frame.get("type") != "command":
            return
        command_id = frame["id"]
        await ws.send(json.dumps({"type": "ack", "id": command_id}))
        if command_id in self.seen_commands:
            return  # redelivered: acked again, applied once
        self.seen_commands.add(command_id)
        job_id = frame["job"]
        if frame["action"] == "start":
            asyncio.create_task(self._start_job(frame))
            return
        group = self.groups.get(job_id)
        if frame["action"] == "scale_workers":
            # The control plane carries it out: this node only starts the joiners placed here.
            if group is not None:
                await group.send_command(frame)
            if (frame.get("payload") or {}).get("join"):
                asyncio.create_task(self._add_joiners(frame))
            return
        if group is None:
            await self.outbox.put({"type": "failed", "id": command_id,
                                   "error": f"job {job_id} has no running workers on this node"})
            return
        await group.send_command(frame)

    # -- jobs --------------------------------------------------------------------------
    def _new_group(self, job_id: int, start: dict, first_seq: int) -> WorkerGroup:
        async def on_worker_event(rank: int, event: str, data: dict) -> None:
            await self.outbox.put({**data, "type": "worker", "job": job_id, "rank": rank, "event": event})

        group = WorkerGroup(
            job_id=job_id, start=start, python=self.config.python,
            address=self.config.address, log_dir=self.config.state_dir / "logs",
            first_seq=first_seq, on_metrics=self._buffer_points,
            on_command_done=self._command_done, on_worker_event=on_worker_event,
        )
        self.groups[job_id] = group
        return group

    async def _start_job(self, frame: dict) -> None:
        job_id = frame["job"]
        if job_id in self.groups:
            return
        group = self._new_group(job_id, frame["payload"], frame["seq"])
        try:
            # Rendezvous: report this node's ports, then wait until every node has.
            spec = await self.client.register_workers(job_id, group.choose_ports())
            deadline = asyncio.get_running_loop().time() + RENDEZVOUS_TIMEOUT_S
            while not spec["complete"]:
                if asyncio.get_running_loop().time() > deadline:
                    raise ValueError(f"the other nodes' workers did not register within "
                                     f"{RENDEZVOUS_TIMEOUT_S:.0f} s")
                await asyncio.sleep(0.2)
                spec = await self.client.cluster_spec(job_id)
            workers = await group.spawn(spec["members"], int(spec.get("version") or 1))
        except (OSError, ValueError, ControlPlaneError) as exc:
            self.groups.pop(job_id, None)
            await self.outbox.put({"type": "failed", "id": frame["id"], "error": str(exc)})
            await self._report(job_id, "failed", reason=f"could not start workers: {exc}")
            return
        log.info("job %s: started %d worker(s)", job_id, len(workers))
        await self.outbox.put({"type": "applied", "id": frame["id"], "step": 0})
        await self._report(job_id, "running", workers=workers)
        await self._supervise(job_id, group)

    async def _add_joiners(self, frame: dict) -> None:
        """Start the warm standbys of a grow placed on this node (a new group if the job has
        no workers here yet); report their ports; they report ``standby`` themselves."""
        job_id, join = frame["job"], frame["payload"]["join"]
        group = self.groups.get(job_id)
        new = group is None
        if new:
            start = {k: join[k] for k in ("entrypoint", "hyperparameters", "batch_size", "lr", "strategy",
                                          "topology")}
            group = self._new_group(job_id, {**start, "ranks": [], "world_size": 0,
                                             "workers_min": join.get("workers_min", 1)}, frame["seq"])
        ranks = [int(w["rank"]) for w in join["workers"] if int(w["rank"]) not in group.workers]
        try:
            await self.client.register_workers(job_id, group.choose_ports(ranks))
            started = await group.add_joiners(join, seq=frame["seq"])
        except (OSError, ValueError, KeyError, ControlPlaneError) as exc:
            log.error("job %s: could not start joiners %s: %s", job_id, ranks, exc)
            for rank in ranks:
                if rank not in group.workers:
                    await self.outbox.put({"type": "worker", "job": job_id, "rank": rank, "event": "exited",
                                           "code": None, "error": f"could not start: {exc}"})
            if new and not group.workers:
                self.groups.pop(job_id, None)
                return
            started = []
        log.info("job %s: started %d standby worker(s)", job_id, len(started))
        if new:
            await self._supervise(job_id, group)

    async def _supervise(self, job_id: int, group: WorkerGroup) -> None:
        ok, reason = await group.wait()
        if group.shutting_down:
            return  # run() reports it
        await self._flush_metrics()
        if group.stop_requested:
            status = "stopped"
        elif not ok:
            status = "failed"
        elif group.finished_training:
            status = "succeeded"
        else:
            status = "stopped"  # every worker here left the cluster or died while the job goes on
        outcomes = [{"rank": w.rank, "state": "left"} if w.outcome == LEFT else
                    {"rank": w.rank, "state": "failed", "code": w.process.returncode,
                     "error": group.failure_excerpt(w.rank)}
                    for w in group.workers.values() if w.outcome in (LEFT, CRASHED)]
        log.info("job %s: workers finished (%s)", job_id, status)
        # Report before forgetting the job: a heartbeat in between must still list it.
        await self._report(job_id, status, reason=reason, workers=outcomes or None)
        self.groups.pop(job_id, None)

    async def _report(self, job_id: int, status: str, **kwargs) -> None:
        for attempt in range(5):
            try:
                await self.client.report_job(job_id, status, **kwargs)
                return
            except (ControlPlaneError, OSError) as exc:
                log.warning("reporting job %s %s failed (%s)", job_id, status, exc)
                if isinstance(exc, ControlPlaneError) and 400 <= exc.status < 500:
                    return
                await asyncio.sleep(0.5 * 2 ** attempt)

    async def _command_done(self, command_id: int, ok: bool, step: int | None, error: str,
                            lr: float | None = None) -> None:
        frame = {"type": "applied" if ok else "failed", "id": command_id}
        if ok:
            frame["step"] = step
            if lr is not None:
                frame["lr"] = lr
        else:
            frame["error"] = error
        await self.outbox.put(frame)

    # -- metrics -----------------------------------------------------------------------
    def _buffer_points(self, points: list[dict]) -> None:
        self.points.extend(points)
        overflow = len(self.points) - MAX_BUFFERED_POINTS
        if overflow > 0:
            log.warning("metric buffer full: dropping the %d oldest points", overflow)
            del self.points[:overflow]

    async def _flush_metrics(self) -> None:
        async with self._flush_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        while self.points:
            batch = self.points[:MAX_BATCH_POINTS]
            batch_id = uuid.uuid4().hex
            for attempt in range(8):
                try:
                    await self.client.send_metrics(batch_id, batch)
                    break
                except ControlPlaneError as exc:
                    if 400 <= exc.status < 500:
                        log.error("metric batch rejected (%s); dropping %d points", exc, len(batch))
                        break
                    await asyncio.sleep(min(0.2 * 2 ** attempt, 5))
                except OSError as exc:
                    log.warning("metric upload failed (%s); retrying", exc)
                    await asyncio.sleep(min(0.2 * 2 ** attempt, 5))
            else:
                return  # keep the points; the next flush tries again
            del self.points[:len(batch)]

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.metrics_flush_s)
            await self._flush_metrics()


def run(config: AgentConfig) -> None:
    async def main() -> None:
        agent = Agent(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stopping.set)
        await agent.run()

    asyncio.run(main())
