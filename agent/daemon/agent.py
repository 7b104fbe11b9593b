"""The agent daemon: enrol, heartbeat, take commands, run workers, ship metrics and logs.

Four loops run side by side: the heartbeat (``POST /api/v1/agent/heartbeat/`` every
``AGENT_HEARTBEAT_S``; its reply names jobs to end), the command channel (a WebSocket to
``/ws/agent/``, reconnected with exponential backoff and jitter: commands are acked on
receipt and applied once by id; reports go out through the :mod:`outbox
<agent.daemon.outbox>`), the metric shipper (:mod:`agent.daemon.metrics`) and the log
shipper (:mod:`agent.daemon.logship`). Each job's workers are a
:class:`~agent.daemon.workers.WorkerGroup`; a job's last output is shipped before its end
is reported.

A command is written to the job's state on disk *before* it is acked, and workers run in
sessions of their own, so a restarted agent (same ``AGENT_STATE_DIR``) re-attaches to
the workers still running and carries on; a redelivered ``start`` for a job it still runs
is acked without starting anything. On SIGTERM/SIGINT the agent by default detaches
(``AGENT_ON_EXIT=detach``: the workers train on, each handing over what it had written);
``AGENT_ON_EXIT=stop`` stops them and reports their jobs failed. docs/protocols.md
describes the frames and the guarantees.

When the control plane refuses the node for good — an admin revoked it (its workers are
then stopped: their jobs went on without them), the enrolment was refused (join token,
name) or the protocol is not spoken there — the agent says why and exits with
:data:`~agent.protocol.EXIT_REFUSED` instead of trying again forever, so that a
supervisor does not restart it either. A control plane it cannot reach is tried again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import websockets

from adaptrain.rest import ApiError
from agent.daemon import gpus
from agent.daemon.bundles import MAX_ARCHIVE_BYTES, BundleCache, CodeUnavailable, refusal
from agent.daemon.client import ControlPlaneClient, channel_headers
from agent.daemon.config import AgentConfig
from agent.daemon.enrolment import KUBERNETES_RECOVERY, Refused, ensure_credential, node_refusal
from agent.daemon.gpu_pinning import GpuPool
from agent.daemon.gpu_telemetry import gpu_points, gpu_stats
from agent.daemon.logship import LogShipper
from agent.daemon.metrics import MetricShipper
from agent.daemon.outbox import ReportOutbox, Sender
from agent.daemon.processes import CRASHED, LEFT, LocalWorker, LogLimits
from agent.daemon.storage import jobs_dir, outbox_path
from agent.daemon.workers import OnWorkerEvent, WorkerGroup
from agent.protocol import EXIT_REFUSED, ProtocolError
from agent.protocol import rest as rest_errors
from agent.protocol import vocabulary as v
from agent.protocol.control import (
    CLOSE_NODE_REVOKED,
    CLOSE_PROTOCOL_INCOMPATIBLE,
    AckFrame,
    AppliedFrame,
    ClusterFrame,
    CommandFrame,
    ErrorFrame,
    ExitedEvent,
    FailedFrame,
    ReceivedFrame,
    StartPayload,
    StopPayload,
    ToAgent,
    WorkerEvent,
    WorkerFrame,
    parse_to_agent,
)
from agent.protocol.rest import GpuStat, JobReport, WorkerStatus

log = logging.getLogger("agent")

RENDEZVOUS_TIMEOUT_S = 120.0
# How long a stopping agent waits for the control plane to take its goodbye.
GOODBYE_TIMEOUT_S = 5.0
# The agent's exit status when the control plane no longer knows its node (deleted by an
# admin): a supervisor restarts it, and it enrols again if it has a usable join token.
EXIT_NODE_UNKNOWN = 1

Ack = Callable[[], Awaitable[None]]


class Agent:
    def __init__(self, config: AgentConfig):
        self.config = config
        self.client = ControlPlaneClient(config.server, code=config.code)
        self.bundles = BundleCache(
            config.state_dir,
            lambda digest: self.client.fetch_bundle(digest, limit_bytes=MAX_ARCHIVE_BYTES),
        )
        self.groups: dict[int, WorkerGroup] = {}
        self.gpu_pool = GpuPool(config.gpus.uuids)  # each worker owns one (gpu_pinning)
        self.seen_commands: set[int] = set()
        self.outbox = ReportOutbox(outbox_path(config.state_dir))
        self.metrics = MetricShipper(self.client, config.metrics_flush_s, config.state_dir)
        self.logs = LogShipper(
            self.client,
            config.state_dir,
            flush_s=config.log_flush_s,
            rate=config.log_rate_lines_s,
        )
        self.stopping = asyncio.Event()
        # Why the agent stops on its own (None: a signal asked it to) and its exit status.
        self.exit_reason: str | None = None
        self.exit_status = 0
        self.revoked = False
        self._tasks: list[asyncio.Task[None]] = []
        # Commands the agent carries out itself; the others go to the job's workers.
        self._command_handlers: dict[str, Callable[[CommandFrame, Ack], Awaitable[None]]] = {
            v.START: self._on_start,
            v.SCALE_WORKERS: self._on_scale,
        }

    # -- enrolment ---------------------------------------------------------------------
    async def ensure_credential(self) -> bool:
        """Check the stored credential, or enrol with the join token (see
        :func:`agent.daemon.enrolment.ensure_credential`)."""
        return await ensure_credential(self.client, self.config, self.stopping)

    def stop_for_good(
        self, reason: str, *, status: int = EXIT_REFUSED, revoked: bool = False
    ) -> None:
        """Stop the agent on its own with ``status`` (once: the first reason wins)."""
        if self.exit_reason is not None:
            return
        log.error("%s", reason)
        self.exit_reason, self.exit_status, self.revoked = reason, status, revoked
        self.stopping.set()

    # -- loops -------------------------------------------------------------------------
    async def run(self) -> None:
        inventory = self.config.gpus
        for warning in inventory.warnings:  # e.g. /dev/nvidia* present but NVML failing
            log.warning("GPU discovery: %s", warning)
        log.info(
            "GPUs: %d (via %s), %d worker slot(s)",
            len(inventory.gpus),
            inventory.source,
            self.config.slots,
        )
        if inventory.gpus and self.config.slots > len(inventory.gpus):
            log.warning(
                "AGENT_SLOTS=%d exceeds the %d GPU(s) this agent may use: a worker never "
                "shares a GPU, so workers placed beyond the GPU count fail to start",
                self.config.slots,
                len(inventory.gpus),
            )
        try:
            if not await self.ensure_credential():
                return
        except Refused as exc:
            self.stop_for_good(str(exc))
            return
        self.outbox.load()
        restored = self._load_jobs()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._command_loop(), name="commands"),
            asyncio.create_task(self.metrics.run(), name="metrics"),
            asyncio.create_task(self.logs.run(self._workers_by_job), name="logs"),
        ]
        for group in restored:
            self._resume_job(group)
        await self.stopping.wait()
        if self.config.on_exit == "leave" and not self.revoked and self.exit_reason is None:
            await self._leave()
        if self.revoked:
            # The control plane took its jobs off this node already: end their workers.
            log.info("stopping the workers of %d job(s): the node was revoked", len(self.groups))
            for group in list(self.groups.values()):
                group.shutting_down = True
                await group.terminate()
                group.forget()
            self.groups.clear()
        elif self.config.on_exit in ("stop", "leave"):
            log.info("shutting down: stopping %d job(s)", len(self.groups))
            for job_id, group in list(self.groups.items()):
                group.shutting_down = True
                await group.terminate()
                await self.logs.finish(job_id, list(group.workers.values()))
                reason = f"the agent on node {self.config.name} shut down"
                await self._report(job_id, JobReport(status=v.FAILED, reason=reason))
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
        if not self.revoked:  # a revoked node's points would be refused
            await self.metrics.flush()
            await self.logs.flush(self._workers_by_job())
        if not self.revoked and self.exit_reason is None:
            await self._say_goodbye()
        await self.metrics.flush()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.metrics.close()

    async def _leave(self) -> None:
        """AGENT_ON_EXIT=leave (the agent of a Slurm allocation that ends): have the control
        plane drain this node and shrink its elastic jobs' workers away, then wait — up to
        AGENT_LEAVE_TIMEOUT_S, which should be shorter than Slurm's KillWait — until they
        have left at a step boundary and been reported. What is left after that is stopped
        as with AGENT_ON_EXIT=stop."""
        loop = asyncio.get_running_loop()
        log.info(
            "leaving: asking the control plane to shrink %d job(s) off this node", len(self.groups)
        )
        try:
            kept = await asyncio.wait_for(
                self.client.leave("its agent was asked to stop (SIGTERM)"), GOODBYE_TIMEOUT_S
            )
        except (ApiError, OSError, asyncio.TimeoutError) as exc:
            log.warning("could not ask the control plane to shrink jobs off this node: %s", exc)
            return
        waiting = [job_id for job_id in self.groups if job_id not in kept]
        deadline = loop.time() + self.config.leave_timeout_s
        while any(job_id in self.groups for job_id in waiting) and loop.time() < deadline:
            await asyncio.sleep(0.2)
        left = [job_id for job_id in waiting if job_id not in self.groups]
        log.info(
            "leaving: job(s) %s shrank off this node; stopping %s",
            left or "none",
            sorted(self.groups) or "nothing",
        )

    async def _say_goodbye(self) -> None:
        """A signal stops the agent: tell the control plane, so the node shows offline at
        once rather than lost after the heartbeat timeout (best effort: a control plane
        that does not answer learns it from the silence, as before)."""
        detached = sorted(self.groups) if self.config.on_exit == "detach" else []
        reason = f"the agent stopped ({'workers left running' if detached else 'no workers'})"
        try:
            await asyncio.wait_for(self.client.goodbye(reason, detached), GOODBYE_TIMEOUT_S)
        except (ApiError, OSError, asyncio.TimeoutError) as exc:
            log.warning("could not say goodbye to the control plane: %s", exc)

    def _workers_by_job(self) -> dict[int, list[LocalWorker]]:
        """Each job's workers here, for the log shipper."""
        return {job_id: list(group.workers.values()) for job_id, group in self.groups.items()}

    # -- jobs a previous agent left --------------------------------------------------------
    def _group_kwargs(self) -> dict[str, Any]:
        return dict(
            python=self.config.python,
            address=self.config.address,
            state_dir=self.config.state_dir,
            on_metrics=self.metrics.add,
            on_command_done=self._command_done,
            gpu_pool=self.gpu_pool,
            grace_s=self.config.orphan_grace_s,
            ignore_sigterm=self.config.on_exit == "leave",
            log_limits=LogLimits(
                file_max_bytes=self.config.log_file_max_bytes,
                line_max_bytes=self.config.log_line_max_bytes,
            ),
        )

    def _load_jobs(self) -> list[WorkerGroup]:
        """The jobs a previous agent left in the state directory."""
        restored = []
        for path in sorted(jobs_dir(self.config.state_dir).glob("job-*.json")):
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
            for worker in group.workers.values():
                # A metrics line spooled by an agent killed before it acknowledged the line
                # comes again from the worker: skipped, not spooled twice.
                worker.acked_n = max(worker.acked_n, self.metrics.handled(job_id, worker.rank))
            self.groups[job_id] = group
            self.seen_commands |= group.commands.seen
            restored.append(group)
        return restored

    def _resume_job(self, group: WorkerGroup) -> None:
        """Carry on with a job a previous agent ran (or was starting) here."""
        job_id, notes = group.job_id, group.notes
        if group.workers:
            alive = group.reattach()
            log.info(
                "job %s: re-attached to %d running worker(s) (%s)",
                job_id,
                len(alive),
                ", ".join(f"rank {r} pid {group.workers[r].pid}" for r in alive) or "none left",
            )
            if notes.start is not None and not notes.started:
                asyncio.create_task(self._job_started(group, notes.start))
            for frame in list(notes.joins):
                asyncio.create_task(self._add_joiners(frame, supervise=False))
            if notes.terminate is not None:
                stop = CommandFrame(
                    id=notes.terminate,
                    job=job_id,
                    seq=0,
                    action=v.STOP,
                    payload=StopPayload(terminate=True).to_dict(),
                )
                asyncio.create_task(group.send_command(stop))
            asyncio.create_task(group.resume_commands())
            asyncio.create_task(self._supervise(job_id, group))
        elif notes.start is not None:
            log.info(
                "job %s: starting its workers again (the agent restarted while starting them)",
                job_id,
            )
            asyncio.create_task(self._start_job(notes.start, group))
        else:
            joins = list(notes.joins)
            if not joins:
                group.forget()
                self.groups.pop(job_id, None)
                return
            for i, frame in enumerate(joins):
                asyncio.create_task(self._add_joiners(frame, supervise=i == 0))

    # -- heartbeat -------------------------------------------------------------------------
    async def _gpu_report(self) -> tuple[GpuStat, ...] | None:
        """The GPUs' state now, for the heartbeat; their owners' gpu_util/gpu_mem points
        go to the metric shipper (:mod:`agent.daemon.gpu_telemetry`). None: no GPU."""
        inventory = self.config.gpus
        if not inventory.gpus:
            return None
        try:
            samples = await asyncio.to_thread(gpus.sample, inventory)
            stats = gpu_stats(inventory, samples, self.gpu_pool)
            jobs = {job: (group.workers, group.members) for job, group in self.groups.items()}
            points = gpu_points(stats, jobs)
        except Exception as exc:  # telemetry must never stop the heartbeat
            log.warning("GPU telemetry failed: %s", exc)
            return None
        if points:
            self.metrics.add(points)
        return stats

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                reply = await self.client.heartbeat(sorted(self.groups), await self._gpu_report())
                for job_id in reply.release:
                    await self._release(job_id)
            except ApiError as exc:
                self._heartbeat_refused(exc)
            except OSError as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.config.heartbeat_s)

    def _heartbeat_refused(self, exc: ApiError) -> None:
        reason = node_refusal(exc)
        if reason is not None:
            self.stop_for_good(reason, revoked=exc.code == rest_errors.ERROR_NODE_REVOKED)
        elif exc.code == rest_errors.ERROR_NODE_UNKNOWN:
            self.stop_for_good(
                f"the control plane no longer knows this node ({exc.message}); the agent "
                f"stops, and started again it enrols with AGENT_JOIN_TOKEN if that is still good",
                status=EXIT_NODE_UNKNOWN,
            )
        else:
            log.warning("heartbeat failed: %s", exc)

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

    # -- the command channel -----------------------------------------------------------
    async def _command_loop(self) -> None:
        delay = 0.5
        headers = channel_headers(self.client.credential or "")
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
                    sender = asyncio.create_task(self.outbox.send_all(ws))
                    try:
                        async for raw in ws:
                            try:
                                frame = parse_to_agent(json.loads(raw))
                            except ValueError as exc:  # ProtocolError included
                                log.warning("ignoring a frame from the control plane: %s", exc)
                                continue
                            await self._on_frame(ws, frame)
                    finally:
                        sender.cancel()
            except websockets.ConnectionClosed as exc:
                if self._channel_closed_for_good(exc):
                    return
                log.warning("command channel down (%s); retrying in %.1f s", exc, delay)
            except (OSError, websockets.WebSocketException, asyncio.TimeoutError) as exc:
                log.warning("command channel down (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 15.0)

    def _channel_closed_for_good(self, exc: websockets.ConnectionClosed) -> bool:
        """Whether the control plane closed the channel to stop this agent (and so it did)."""
        code = exc.rcvd.code if exc.rcvd is not None else None
        if code == CLOSE_NODE_REVOKED:
            self.stop_for_good(
                "this node was revoked by an admin (the control plane closed its command "
                "channel); the agent stops. To use this machine again, delete "
                "AGENT_STATE_DIR/credential and start the agent with a new AGENT_JOIN_TOKEN."
                + KUBERNETES_RECOVERY,
                revoked=True,
            )
            return True
        if code == CLOSE_PROTOCOL_INCOMPATIBLE:
            self.stop_for_good(
                "the control plane refuses this agent's protocol (its message is logged "
                "above); upgrade the control plane first, then the agents"
            )
            return True
        return False

    async def _on_frame(self, ws: Sender, frame: ToAgent) -> None:
        match frame:
            case ReceivedFrame(ref=ref):
                self.outbox.confirm(ref)
            case ErrorFrame(message=message):
                log.warning("control plane says: %s", message)
            case ClusterFrame():
                group = self.groups.get(frame.job)
                if group is not None and await group.apply_cluster(
                    frame.version, list(frame.members), workers_min=frame.workers_min
                ):
                    log.info(
                        "job %s: cluster version %s with %d member(s)",
                        frame.job,
                        frame.version,
                        len(frame.members),
                    )
            case CommandFrame():
                await self._on_command(ws, frame)

    async def _on_command(self, ws: Sender, frame: CommandFrame) -> None:
        async def ack() -> None:
            await ws.send(json.dumps(AckFrame(id=frame.id).to_dict()))

        if frame.id in self.seen_commands:
            await ack()
            return  # redelivered: acked again, applied once
        self.seen_commands.add(frame.id)
        try:
            frame.typed_payload()  # the payloads the agent reads itself, checked once here
        except ProtocolError as exc:
            await ack()
            self.outbox.put(FailedFrame(id=frame.id, error=str(exc)))
            return
        # Each command is on disk (the job's state) before it is acked: an agent that
        # restarts after the ack still carries it out.
        handler = self._command_handlers.get(frame.action, self._on_job_command)
        await handler(frame, ack)

    async def _on_start(self, frame: CommandFrame, ack: Ack) -> None:
        if frame.job in self.groups:
            await ack()  # its workers run here already (re-attached after a restart)
            return
        group = self._new_group(frame.job, frame.start_payload(), frame.seq)
        group.commands.seen.add(frame.id)
        group.notes.start = frame
        group.save()
        # Carried out even when the ack fails (the channel closed): a redelivery of a
        # command taken on is only acked again, never carried out again.
        try:
            await ack()
        finally:
            asyncio.create_task(self._start_job(frame, group))

    async def _on_scale(self, frame: CommandFrame, ack: Ack) -> None:
        """The control plane carries a resize out: this node only starts the joiners
        placed here, and forwards the command line (its seq) to the workers."""
        group = self.groups.get(frame.job)
        join = frame.scale_payload().join
        new = group is None and join is not None
        if group is None and join is not None:
            group = self._new_group(frame.job, join.joiners_start(frame.job), frame.seq)
        if group is not None:
            if join is not None:
                group.notes.joins.append(frame)
            group.record_command(frame)
        try:
            await ack()
        finally:
            if group is not None:
                await group.send_command(frame)
            if join is not None:
                asyncio.create_task(self._add_joiners(frame, supervise=new))

    async def _on_job_command(self, frame: CommandFrame, ack: Ack) -> None:
        group = self.groups.get(frame.job)
        if group is None:
            await ack()
            error = f"job {frame.job} has no running workers on this node"
            self.outbox.put(FailedFrame(id=frame.id, error=error))
            return
        group.record_command(frame)
        try:
            await ack()
        finally:  # forwarded even when the ack fails: see _on_start
            await group.send_command(frame)

    # -- jobs --------------------------------------------------------------------------
    def _worker_event_sender(self, job_id: int) -> OnWorkerEvent:
        async def on_worker_event(rank: int, event: WorkerEvent) -> None:
            self.outbox.put(WorkerFrame(job=job_id, rank=rank, event=event))

        return on_worker_event

    def _new_group(self, job_id: int, start: StartPayload, first_seq: int) -> WorkerGroup:
        group = WorkerGroup(
            job_id=job_id,
            start=start,
            first_seq=first_seq,
            **self._group_kwargs(),
            on_worker_event=self._worker_event_sender(job_id),
        )
        self.groups[job_id] = group
        return group

    async def _prepare_code(self, group: WorkerGroup, entrypoint: str, bundle: str | None) -> None:
        """Refuse code this node does not run (AGENT_CODE); fetch a bundle the job names and
        make the job's directory (:mod:`agent.daemon.bundles`). :class:`CodeUnavailable`
        says why the workers cannot start."""
        why = refusal(entrypoint, bundle, self.config.code)
        if why is not None:
            raise CodeUnavailable(why)
        if bundle:
            group.code = await self.bundles.prepare(group.job_id, bundle)

    async def _start_job(self, frame: CommandFrame, group: WorkerGroup) -> None:
        job_id = frame.job
        try:
            await self._prepare_code(group, group.start.entrypoint, group.start.bundle)
            # Rendezvous: report this node's ports, then wait until every node has.
            spec = await self.client.register_workers(job_id, group.choose_ports())
            deadline = asyncio.get_running_loop().time() + RENDEZVOUS_TIMEOUT_S
            while not spec.complete:
                if asyncio.get_running_loop().time() > deadline:
                    raise ValueError(
                        f"the other nodes' workers did not register within "
                        f"{RENDEZVOUS_TIMEOUT_S:.0f} s"
                    )
                await asyncio.sleep(0.2)
                spec = await self.client.cluster_spec(job_id)
            await group.spawn(spec.members, spec.version or 1)
        except (OSError, ValueError, ApiError, CodeUnavailable) as exc:
            log.error("job %s: could not start its workers: %s", job_id, exc)
            self.groups.pop(job_id, None)
            group.forget()
            self.outbox.put(FailedFrame(id=frame.id, error=str(exc)))
            reason = f"could not start workers: {exc}"
            await self._report(job_id, JobReport(status=v.FAILED, reason=reason))
            return
        log.info("job %s: started %d worker(s)", job_id, len(group.ranks))
        await self._job_started(group, frame)
        await self._supervise(job_id, group)

    async def _job_started(self, group: WorkerGroup, frame: CommandFrame) -> None:
        self.outbox.put(AppliedFrame(id=frame.id, step=0))
        workers = tuple(
            WorkerStatus(rank=r, state=v.RUNNING, port=group.ports[r]) for r in group.ranks
        )
        await self._report(group.job_id, JobReport(status=v.RUNNING, workers=workers))
        group.notes.started = True
        group.save()

    async def _add_joiners(self, frame: CommandFrame, *, supervise: bool) -> None:
        """Start the warm standbys of a grow placed on this node (``supervise``: the group
        is new, started for them); report their ports; they report ``standby`` themselves."""
        job_id, join = frame.job, frame.scale_payload().join
        group = self.groups.get(job_id)
        if group is None or join is None:
            return
        ranks = [w.rank for w in join.workers if w.rank not in group.workers]
        try:
            await self._prepare_code(group, join.entrypoint, join.bundle)
            await self.client.register_workers(job_id, group.choose_ports(ranks))
            started = await group.add_joiners(join, seq=frame.seq)
        except (OSError, ValueError, ApiError, CodeUnavailable) as exc:
            log.error("job %s: could not start joiners %s: %s", job_id, ranks, exc)
            for rank in ranks:
                if rank not in group.workers:
                    event = ExitedEvent(code=None, error=f"could not start: {exc}")
                    self.outbox.put(WorkerFrame(job=job_id, rank=rank, event=event))
            started = []
        group.notes.joins = [f for f in group.notes.joins if f.id != frame.id]
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
        await self.metrics.flush()
        # The last lines (a traceback) are stored before the job is reported over.
        await self.logs.finish(job_id, list(group.workers.values()))
        if group.stop_requested:
            status = v.STOPPED
        elif not ok:
            status = v.FAILED
        elif group.finished_training:
            status = v.SUCCEEDED
        else:
            status = v.STOPPED  # every worker here left the cluster or died while the job goes on
        outcomes = tuple(
            WorkerStatus(rank=w.rank, state=v.LEFT)
            if w.outcome == LEFT
            else WorkerStatus(
                rank=w.rank, state=v.FAILED, code=w.code, error=group.failure_excerpt(w.rank)
            )
            for w in group.workers.values()
            if w.outcome in (LEFT, CRASHED)
        )
        log.info("job %s: workers finished (%s)", job_id, status)
        # Report before forgetting the job: a heartbeat in between must still list it.
        await self._report(
            job_id, JobReport(status=status, reason=reason, workers=outcomes or None)
        )
        self.groups.pop(job_id, None)
        group.forget()

    async def _report(self, job_id: int, report: JobReport) -> None:
        # Retried for about two minutes: long enough for the control plane to restart.
        for attempt in range(16):
            try:
                await self.client.report_job(job_id, report)
                return
            except (ApiError, OSError) as exc:
                log.warning("reporting job %s %s failed (%s)", job_id, report.status, exc)
                if isinstance(exc, ApiError) and 400 <= exc.status < 500:
                    return
                await asyncio.sleep(min(0.5 * 2**attempt, 10.0))

    async def _command_done(self, report: AppliedFrame | FailedFrame) -> None:
        self.outbox.put(report)


def run(config: AgentConfig) -> int:
    """Run the agent until a signal stops it (0) or the control plane stopped it: its exit
    status then (:data:`~agent.protocol.EXIT_REFUSED` when refused for good)."""

    async def main() -> int:
        agent = Agent(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stopping.set)
        await agent.run()
        return agent.exit_status

    return asyncio.run(main())
