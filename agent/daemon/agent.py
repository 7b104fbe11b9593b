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

Restarts. Workers run in sessions of their own and talk to the agent over Unix sockets
(:mod:`agent.daemon.workers`), so they outlive it. Each job's state is kept on disk under
``AGENT_STATE_DIR/jobs/`` and a command is written there *before* it is acked, so a
restarted agent (same state directory) re-attaches to the workers still running,
forwards the commands they have not answered and reports them when they do; the
control plane learns from the heartbeat's job list that the jobs still run here, and a
redelivered ``start`` for such a job is acked without starting anything. Reports to the
control plane (``applied``, ``failed``, ``worker``) carry a ``ref`` and stay in
``AGENT_STATE_DIR/outbox.json`` until the control plane confirms them (``{"type":
"received", "ref"}``); they are sent again on every reconnection until then.

On SIGTERM/SIGINT the agent by default *detaches* (``AGENT_ON_EXIT=detach``): its
workers go on training and a restarted agent takes them over (each worker first hands
over what it had written, so a detach loses no metric); ``AGENT_ON_EXIT=stop``
stops them and reports their jobs failed, as an agent that goes away for good should.
Workers left without an agent for ``AGENT_ORPHAN_GRACE_S`` stop themselves.
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

from agent.daemon.client import ControlPlaneClient, ControlPlaneError
from agent.daemon.config import AgentConfig
from agent.daemon.workers import CRASHED, LEFT, WorkerGroup, write_json_atomically

log = logging.getLogger("agent")

MAX_BUFFERED_POINTS = 200_000
MAX_BATCH_POINTS = 5_000
RENDEZVOUS_TIMEOUT_S = 120.0
MAX_UNCONFIRMED_REPORTS = 10_000


class Agent:
    def __init__(self, config: AgentConfig):
        self.config = config
        self.client = ControlPlaneClient(config.server)
        self.groups: dict[int, WorkerGroup] = {}
        self.seen_commands: set[int] = set()
        # Reports not yet confirmed by the control plane, by ref, in order (kept on disk).
        self.reports: dict[str, dict] = {}
        self._report_added = asyncio.Event()
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
            raise SystemExit(
                "This node is not enrolled: set AGENT_JOIN_TOKEN to a join token "
                "(create one with: python manage.py create_join_token)."
            )
        reply = await self.client.enrol(
            join_token=self.config.join_token,
            name=self.config.name,
            address=self.config.address,
            slots=self.config.slots,
            labels=self.config.labels,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(reply["credential"])
        self.client.credential = reply["credential"]
        log.info("enrolled as node %s (id %s)", reply["name"], reply["node"])

    # -- loops -------------------------------------------------------------------------
    async def run(self) -> None:
        await self.ensure_credential()
        self._load_reports()
        restored = self._load_jobs()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._command_loop(), name="commands"),
            asyncio.create_task(self._metrics_loop(), name="metrics"),
        ]
        for group in restored:
            self._resume_job(group)
        await self.stopping.wait()
        if self.config.on_exit == "stop":
            log.info("shutting down: stopping %d job(s)", len(self.groups))
            for job_id, group in list(self.groups.items()):
                group.shutting_down = True
                await group.terminate()
                await self._report(
                    job_id, "failed", reason=f"the agent on node {self.config.name} shut down"
                )
                group.forget()
        else:
            log.info(
                "shutting down: leaving %d job(s) running for the next agent to re-attach "
                "(AGENT_ON_EXIT=detach)",
                len(self.groups),
            )
            for group in self.groups.values():
                group.shutting_down = True
            await asyncio.gather(*(group.detach() for group in self.groups.values()))
        await self._flush_metrics()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- state kept across restarts ----------------------------------------------------
    @property
    def _reports_path(self):
        return self.config.state_dir / "outbox.json"

    def _load_reports(self) -> None:
        try:
            frames = json.loads(self._reports_path.read_text())
        except FileNotFoundError:
            return
        except ValueError as exc:
            log.error("ignoring %s: %s", self._reports_path, exc)
            return
        self.reports = {f["ref"]: f for f in frames if isinstance(f, dict) and "ref" in f}
        if self.reports:
            log.info("%d report(s) from before the restart to send again", len(self.reports))

    def _save_reports(self) -> None:
        write_json_atomically(self._reports_path, list(self.reports.values()))

    async def _put_report(self, frame: dict) -> None:
        """Send ``frame`` to the control plane at least once, across reconnections and
        restarts: it is kept until the control plane confirms it."""
        frame = {**frame, "ref": uuid.uuid4().hex}
        self.reports[frame["ref"]] = frame
        if len(self.reports) > MAX_UNCONFIRMED_REPORTS:
            del self.reports[next(iter(self.reports))]
        self._save_reports()
        self._report_added.set()

    def _group_kwargs(self) -> dict:
        return dict(
            python=self.config.python,
            address=self.config.address,
            state_dir=self.config.state_dir,
            on_metrics=self._buffer_points,
            on_command_done=self._command_done,
            grace_s=self.config.orphan_grace_s,
        )

    def _load_jobs(self) -> list[WorkerGroup]:
        """The jobs a previous agent left in the state directory."""
        restored = []
        for path in sorted((self.config.state_dir / "jobs").glob("job-*.json")):
            try:
                state = json.loads(path.read_text())
                job_id = int(state["job"])
                group = WorkerGroup.restore(
                    state, **self._group_kwargs(), on_worker_event=self._worker_event_sender(job_id)
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("cannot read %s (%s); moving it aside", path, exc)
                path.rename(path.with_name(path.name + ".unreadable"))
                continue
            self.groups[job_id] = group
            self.seen_commands |= group.seen
            restored.append(group)
        return restored

    def _resume_job(self, group: WorkerGroup) -> None:
        """Carry on with a job a previous agent ran (or was starting) here."""
        job_id = group.job_id
        if group.workers:
            alive = group.reattach()
            log.info(
                "job %s: re-attached to %d running worker(s) (%s)",
                job_id,
                len(alive),
                ", ".join(f"rank {r} pid {group.workers[r].pid}" for r in alive) or "none left",
            )
            start = group.meta.get("start")
            if start is not None and not group.meta.get("started"):
                asyncio.create_task(self._job_started(group, start))
            for frame in list(group.meta.get("joins", [])):
                asyncio.create_task(self._add_joiners(frame, supervise=False))
            if group.meta.get("terminate") is not None:
                asyncio.create_task(
                    group.send_command(
                        {
                            "id": group.meta["terminate"],
                            "action": "stop",
                            "seq": 0,
                            "payload": {"terminate": True},
                        }
                    )
                )
            asyncio.create_task(group.resume_commands())
            asyncio.create_task(self._supervise(job_id, group))
        elif group.meta.get("start") is not None:
            log.info(
                "job %s: starting its workers again (the agent restarted while starting them)",
                job_id,
            )
            asyncio.create_task(self._start_job(group.meta["start"], group))
        else:
            joins = list(group.meta.get("joins", []))
            if not joins:
                group.forget()
                self.groups.pop(job_id, None)
                return
            for i, frame in enumerate(joins):
                asyncio.create_task(self._add_joiners(frame, supervise=i == 0))

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                reply = await self.client.heartbeat(sorted(self.groups))
                for job_id in reply.get("release") or []:
                    await self._release(int(job_id))
            except (ControlPlaneError, OSError) as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.config.heartbeat_s)

    async def _release(self, job_id: int) -> None:
        """The control plane no longer counts on this node's workers of the job (it took
        the node for lost while this agent was away, or the job moved on to a new run):
        end them, as a stop would."""
        group = self.groups.get(job_id)
        if group is None or group.stop_requested:
            return
        log.warning(
            "job %s: the control plane no longer counts on this node's workers of it "
            "(the node was taken for lost, or the job restarted); ending them",
            job_id,
        )
        group.stop_requested = True
        group.save()
        await group.terminate()

    async def _command_loop(self) -> None:
        delay = 0.5
        headers = {"Authorization": f"Node {self.client.credential}"}
        while True:
            try:
                async with websockets.connect(
                    self.config.ws_url,
                    additional_headers=headers,
                    open_timeout=10,
                    ping_interval=20,
                ) as ws:
                    log.info("command channel connected")
                    delay = 0.5
                    sender = asyncio.create_task(self._send_reports(ws))
                    try:
                        async for raw in ws:
                            await self._on_frame(ws, json.loads(raw))
                    finally:
                        sender.cancel()
            except (OSError, websockets.WebSocketException, asyncio.TimeoutError) as exc:
                log.warning("command channel down (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 15.0)

    async def _send_reports(self, ws) -> None:
        """Send every unconfirmed report once per connection, in order, then new ones as
        they come (a report stays until the control plane confirms it)."""
        sent: set[str] = set()
        while True:
            todo = [f for ref, f in self.reports.items() if ref not in sent]
            if not todo:
                self._report_added.clear()
                await self._report_added.wait()
                continue
            for frame in todo:
                await ws.send(json.dumps(frame))
                sent.add(frame["ref"])

    async def _on_frame(self, ws, frame: dict) -> None:
        if frame.get("type") == "received":
            if self.reports.pop(frame.get("ref"), None) is not None:
                self._save_reports()
            return
        if frame.get("type") == "error":
            log.warning("control plane says: %s", frame.get("message"))
            return
        if frame.get("type") == "cluster":
            group = self.groups.get(frame.get("job"))
            if group is not None and await group.apply_cluster(
                int(frame["version"]), list(frame["members"]), workers_min=frame.get("workers_min")
            ):
                log.info(
                    "job %s: cluster version %s with %d member(s)",
                    frame["job"],
                    frame["version"],
                    len(frame["members"]),
                )
            return
        if frame.get("type") != "command":
            return
        command_id = frame["id"]

        async def ack() -> None:
            await ws.send(json.dumps({"type": "ack", "id": command_id}))

        if command_id in self.seen_commands:
            await ack()
            return  # redelivered: acked again, applied once
        self.seen_commands.add(command_id)
        job_id = frame["job"]
        # Each command is on disk (the job's state) before it is acked: an agent that
        # restarts after the ack still carries it out.
        if frame["action"] == "start":
            if job_id in self.groups:
                await ack()  # its workers run here already (re-attached after a restart)
                return
            group = self._new_group(job_id, frame["payload"], frame["seq"])
            group.seen.add(command_id)
            group.meta["start"] = frame
            group.save()
            await ack()
            asyncio.create_task(self._start_job(frame, group))
            return
        group = self.groups.get(job_id)
        if frame["action"] == "scale_workers":
            # The control plane carries it out: this node only starts the joiners placed here.
            join = (frame.get("payload") or {}).get("join")
            new = group is None and bool(join)
            if new:
                start = {
                    k: join[k]
                    for k in (
                        "entrypoint",
                        "hyperparameters",
                        "batch_size",
                        "lr",
                        "strategy",
                        "topology",
                    )
                }
                group = self._new_group(
                    job_id,
                    {
                        **start,
                        "ranks": [],
                        "world_size": 0,
                        "workers_min": join.get("workers_min", 1),
                    },
                    frame["seq"],
                )
            if group is not None:
                if join:
                    group.meta.setdefault("joins", []).append(frame)
                group.record_command(frame)
            await ack()
            if group is not None:
                await group.send_command(frame)
            if join:
                asyncio.create_task(self._add_joiners(frame, supervise=new))
            return
        if group is None:
            await ack()
            await self._put_report(
                {
                    "type": "failed",
                    "id": command_id,
                    "error": f"job {job_id} has no running workers on this node",
                }
            )
            return
        group.record_command(frame)
        await ack()
        await group.send_command(frame)

    # -- jobs --------------------------------------------------------------------------
    def _worker_event_sender(self, job_id: int):
        async def on_worker_event(rank: int, event: str, data: dict) -> None:
            await self._put_report(
                {**data, "type": "worker", "job": job_id, "rank": rank, "event": event}
            )

        return on_worker_event

    def _new_group(self, job_id: int, start: dict, first_seq: int) -> WorkerGroup:
        group = WorkerGroup(
            job_id=job_id,
            start=start,
            first_seq=first_seq,
            **self._group_kwargs(),
            on_worker_event=self._worker_event_sender(job_id),
        )
        self.groups[job_id] = group
        return group

    async def _start_job(self, frame: dict, group: WorkerGroup) -> None:
        job_id = frame["job"]
        try:
            # Rendezvous: report this node's ports, then wait until every node has.
            spec = await self.client.register_workers(job_id, group.choose_ports())
            deadline = asyncio.get_running_loop().time() + RENDEZVOUS_TIMEOUT_S
            while not spec["complete"]:
                if asyncio.get_running_loop().time() > deadline:
                    raise ValueError(
                        f"the other nodes' workers did not register within "
                        f"{RENDEZVOUS_TIMEOUT_S:.0f} s"
                    )
                await asyncio.sleep(0.2)
                spec = await self.client.cluster_spec(job_id)
            await group.spawn(spec["members"], int(spec.get("version") or 1))
        except (OSError, ValueError, ControlPlaneError) as exc:
            self.groups.pop(job_id, None)
            group.forget()
            await self._put_report({"type": "failed", "id": frame["id"], "error": str(exc)})
            await self._report(job_id, "failed", reason=f"could not start workers: {exc}")
            return
        log.info("job %s: started %d worker(s)", job_id, len(group.ranks))
        await self._job_started(group, frame)
        await self._supervise(job_id, group)

    async def _job_started(self, group: WorkerGroup, frame: dict) -> None:
        await self._put_report({"type": "applied", "id": frame["id"], "step": 0})
        await self._report(
            group.job_id,
            "running",
            workers=[{"rank": r, "port": group.ports[r], "state": "running"} for r in group.ranks],
        )
        group.meta["started"] = True
        group.save()

    async def _add_joiners(self, frame: dict, *, supervise: bool) -> None:
        """Start the warm standbys of a grow placed on this node (``supervise``: the group
        is new, started for them); report their ports; they report ``standby`` themselves."""
        job_id, join = frame["job"], frame["payload"]["join"]
        group = self.groups.get(job_id)
        if group is None:
            return
        ranks = [int(w["rank"]) for w in join["workers"] if int(w["rank"]) not in group.workers]
        try:
            await self.client.register_workers(job_id, group.choose_ports(ranks))
            started = await group.add_joiners(join, seq=frame["seq"])
        except (OSError, ValueError, KeyError, ControlPlaneError) as exc:
            log.error("job %s: could not start joiners %s: %s", job_id, ranks, exc)
            for rank in ranks:
                if rank not in group.workers:
                    await self._put_report(
                        {
                            "type": "worker",
                            "job": job_id,
                            "rank": rank,
                            "event": "exited",
                            "code": None,
                            "error": f"could not start: {exc}",
                        }
                    )
            started = []
        group.meta["joins"] = [f for f in group.meta.get("joins", []) if f["id"] != frame["id"]]
        group.save()
        if supervise and not group.workers:
            self.groups.pop(job_id, None)
            group.forget()
            return
        log.info("job %s: started %d standby worker(s)", job_id, len(started))
        if supervise:
            await self._supervise(job_id, group)

    async def _supervise(self, job_id: int, group: WorkerGroup) -> None:
        ok, reason = await group.wait()
        if group.shutting_down:
            return  # run() reports it (or leaves it to the next agent)
        await self._flush_metrics()
        if group.stop_requested:
            status = "stopped"
        elif not ok:
            status = "failed"
        elif group.finished_training:
            status = "succeeded"
        else:
            status = "stopped"  # every worker here left the cluster or died while the job goes on
        outcomes = [
            {"rank": w.rank, "state": "left"}
            if w.outcome == LEFT
            else {
                "rank": w.rank,
                "state": "failed",
                "code": w.code,
                "error": group.failure_excerpt(w.rank),
            }
            for w in group.workers.values()
            if w.outcome in (LEFT, CRASHED)
        ]
        log.info("job %s: workers finished (%s)", job_id, status)
        # Report before forgetting the job: a heartbeat in between must still list it.
        await self._report(job_id, status, reason=reason, workers=outcomes or None)
        self.groups.pop(job_id, None)
        group.forget()

    async def _report(self, job_id: int, status: str, **kwargs) -> None:
        # Retried for about two minutes: long enough for the control plane to restart.
        for attempt in range(16):
            try:
                await self.client.report_job(job_id, status, **kwargs)
                return
            except (ControlPlaneError, OSError) as exc:
                log.warning("reporting job %s %s failed (%s)", job_id, status, exc)
                if isinstance(exc, ControlPlaneError) and 400 <= exc.status < 500:
                    return
                await asyncio.sleep(min(0.5 * 2**attempt, 10.0))

    async def _command_done(
        self, command_id: int, ok: bool, step: int | None, error: str, lr: float | None = None
    ) -> None:
        frame = {"type": "applied" if ok else "failed", "id": command_id}
        if ok:
            frame["step"] = step
            if lr is not None:
                frame["lr"] = lr
        else:
            frame["error"] = error
        await self._put_report(frame)

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
                    await asyncio.sleep(min(0.2 * 2**attempt, 5))
                except OSError as exc:
                    log.warning("metric upload failed (%s); retrying", exc)
                    await asyncio.sleep(min(0.2 * 2**attempt, 5))
            else:
                return  # keep the points; the next flush tries again
            del self.points[: len(batch)]

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
