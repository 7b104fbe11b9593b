"""Workers' output, shipped from their log files to the control plane in batches.

Every ``AGENT_LOG_FLUSH_S`` the agent reads what each worker's log keeper appended to
its file (:mod:`agent.daemon.logs`) and posts the new lines of each job as one
:class:`~agent.protocol.rest.LogBatch`. Where it stands in each file (inode and offset,
so a rotation is followed) and the batch in flight are kept in
``logs/job-<id>.shipping.json``, written before the batch is posted: an agent that
restarts (even killed) posts the batch in flight again under the same id, which the
control plane stores once, and reads on from where that batch ended — no line is
shipped twice or skipped. A batch the control plane refuses (4xx) is logged and
dropped; one it cannot take now is posted again later, and nothing more is read for
that job meanwhile (the lines wait in their files).

Each worker may ship ``AGENT_LOG_RATE_LINES_S`` lines per second (by the second they were
written in); beyond that its lines are dropped — they stay in the file on the node —
and a line ``[adaptrain] N lines dropped …`` is shipped in their place. When a worker
has ended, its last lines (up to 200) are shipped whatever the rate, so a flood never
hides the traceback it ended with. A job's lines are merged by time into one batch,
each worker's in the order it wrote them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from adaptrain.rest import ApiError
from agent.daemon import storage
from agent.daemon.client import ControlPlaneClient
from agent.daemon.logs import NOTE, Record, parse_record, previous_path, text_of
from agent.daemon.processes import LocalWorker
from agent.protocol import vocabulary as v
from agent.protocol.rest import LogBatch, LogLine

log = logging.getLogger("agent")

MAX_BATCH_LINES = 5_000
MAX_BATCH_BYTES = 1 << 20  # of text: well under the control plane's limits
READ_BYTES = 1 << 18  # read from one file at a time
HEAD_BYTES = 64
FINAL_LINES = 200  # a worker's last lines, shipped whatever the rate once it ended
KEEPER_EXIT_WAIT_S = 5.0  # for the keepers to write what the workers wrote last
DRAIN_TIMEOUT_S = 60.0  # for the last batches of a job that ended


@dataclass
class Tail:
    """Where the agent stands in one worker's log file, and that worker's rate window."""

    rank: int
    path: Path
    inode: int
    offset: int = 0
    # The file's first bytes (its first record's time): an inode number alone does not
    # tell a file from a later one that reuses the number of a deleted one.
    head: bytes = b""
    window: int = 0  # the second (unix time) being counted
    count: int = 0  # lines shipped in it
    dropped: int = 0  # lines dropped, not yet reported
    caught_up: bool = False  # at the end of the worker's current file at the last read
    # The worker's last records read, and whether each was shipped (not kept on disk: an
    # agent that restarts can rescue only what it read itself).
    recent: deque[tuple[Record, bool]] = field(default_factory=lambda: deque(maxlen=FINAL_LINES))

    def state(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "path": str(self.path),
            "inode": self.inode,
            "offset": self.offset,
            "head": self.head.decode("latin-1"),
            "window": self.window,
            "count": self.count,
            "dropped": self.dropped,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Tail:
        return cls(
            rank=int(d["rank"]),
            path=Path(d["path"]),
            inode=int(d["inode"]),
            offset=int(d["offset"]),
            head=str(d.get("head", "")).encode("latin-1"),
            window=int(d["window"]),
            count=int(d["count"]),
            dropped=int(d["dropped"]),
        )

    def _open(self) -> tuple[IO[bytes] | None, bool]:
        """The file this tail reads (and whether it is the current one, not the previous)."""
        for candidate, current in ((self.path, True), (previous_path(self.path), False)):
            try:
                f = open(candidate, "rb")  # noqa: SIM115 - returned to the caller
            except FileNotFoundError:
                continue
            if os.fstat(f.fileno()).st_ino == self.inode and f.read(len(self.head)) == self.head:
                return f, current
            f.close()
        return None, False

    def _move_to(self, path: Path) -> bool:
        try:
            self.inode, self.offset, self.head = path.stat().st_ino, 0, b""
        except FileNotFoundError:
            return False
        return True

    def read(self, limit: int) -> tuple[list[Record], str]:
        """The whole records written after this tail's position (from at most ``limit``
        bytes), moving past them; and a note when output was lost (the file was rotated
        twice before it was read)."""
        note = ""
        f, current = self._open()
        if f is None:
            # Gone: rotated away twice (the agent fell far behind). Go on with the oldest there.
            if not (self._move_to(previous_path(self.path)) or self._move_to(self.path)):
                self.caught_up = True  # no file at all: nothing to read
                return [], ""
            note = f"{NOTE} some output was lost: the log file was rotated before it was shipped"
            f, current = self._open()
            if f is None:
                return [], note
        with f:
            f.seek(self.offset)
            raw = f.read(limit)
            size = os.fstat(f.fileno()).st_size
        if not self.head and self.offset == 0:
            self.head = raw[:HEAD_BYTES]
        complete = raw[: raw.rfind(b"\n") + 1]
        self.offset += len(complete)
        records = [r for r in map(parse_record, complete.split(b"\n")[:-1]) if r is not None]
        self.caught_up = current and self.offset >= size
        if not current and len(raw) < limit:
            # The previous file is read to its end (the keeper writes whole records, so
            # nothing more comes): on to the one after it, which is the current file or —
            # rotated again meanwhile — the previous one now.
            older = previous_path(self.path)
            with contextlib.suppress(FileNotFoundError):
                if older.stat().st_ino != self.inode:
                    self._move_to(older)
                    return records, note
            self._move_to(self.path)
        return records, note

    def admit(
        self, records: list[Record], *, rate: int, now: float, final: bool = False
    ) -> list[LogLine]:
        """The lines to ship of these records: at most ``rate`` per second of their time,
        and a note for those dropped beyond it (once their second is well over, so the
        worker's last lines can still be rescued). ``final``: the worker has ended — the
        dropped lines among its last :data:`FINAL_LINES` not yet reported in a note are
        shipped after all, so a flood never hides the traceback it ended with."""
        lines = []
        for r in records:
            second = int(r.time)
            if second != self.window:
                self.window, self.count = second, 0
            admitted = self.count < rate
            self.recent.append((r, admitted))
            if not admitted:
                self.dropped += 1
                continue
            if self.dropped:
                lines.append(self._dropped_note(r.time, rate))
            self.count += 1
            lines.append(self._line(r))
        if final:
            # The last `dropped` lines dropped are the ones no note reported yet.
            rescued: list[Record] = []
            for r, admitted in reversed(self.recent):
                if len(rescued) == self.dropped:
                    break
                if not admitted:
                    rescued.append(r)
            self.dropped -= len(rescued)
            if self.dropped:
                lines.append(self._dropped_note(now, rate))
            lines += [self._line(r) for r in reversed(rescued)]
            self.recent.clear()
        elif self.dropped and now >= self.window + 2:
            lines.append(self._dropped_note(float(self.window + 1), rate))
        return lines

    def _line(self, r: Record) -> LogLine:
        return LogLine(rank=self.rank, stream=r.stream, time=r.time, text=text_of(r))

    def _dropped_note(self, t: float, rate: int) -> LogLine:
        text = (
            f"{NOTE} {self.dropped} lines dropped: this worker wrote more than {rate} lines/s "
            f"(AGENT_LOG_RATE_LINES_S); its log file on the node has them"
        )
        self.dropped = 0
        return LogLine(rank=self.rank, stream=v.STDERR, time=t, text=text)


class JobLogs:
    """The log shipping of one job on this node: its workers' tails and the batch in flight."""

    def __init__(self, job_id: int, state_path: Path, *, rate: int, read_bytes: int):
        self.job_id = job_id
        self.state_path = state_path
        self.rate = rate
        self.read_bytes = read_bytes
        self.tails: dict[int, Tail] = {}
        self.inflight: LogBatch | None = None
        self.lock = asyncio.Lock()
        self.retry_at = 0.0
        self.failures = 0
        self._load()

    def _load(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
            self.tails = {t.rank: t for t in map(Tail.from_state, state["tails"])}
            inflight = state.get("inflight")
            self.inflight = None if inflight is None else LogBatch.from_dict(inflight)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error(
                "job %s: cannot read %s (%s); shipping its logs anew",
                self.job_id,
                self.state_path,
                exc,
            )

    def save(self) -> None:
        storage.write_json_atomically(
            self.state_path,
            {
                "tails": [t.state() for t in self.tails.values()],
                "inflight": None if self.inflight is None else self.inflight.to_dict(),
            },
            durable=False,  # an agent that dies leaves it in the page cache: enough
        )

    def forget(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()

    def collect(self, workers: Iterable[LocalWorker]) -> None:
        """Read what the workers wrote since the last batch into a new batch in flight
        (none when there is nothing new). A worker that ended (and its keeper) is read to
        the end of its file, its last lines rescued from the rate limit."""
        workers = list(workers)
        ended = {w.rank: w.gone() and w.keeper_gone() for w in workers}
        for worker in workers:
            if worker.rank not in self.tails and worker.log_path and worker.log_inode:
                self.tails[worker.rank] = Tail(worker.rank, Path(worker.log_path), worker.log_inode)
        per_tail: list[list[LogLine]] = []
        size = 0
        now = time.time()
        for tail in self.tails.values():
            lines: list[LogLine] = []
            final = ended.get(tail.rank, True)  # a worker the group no longer has is over
            while size < MAX_BATCH_BYTES and sum(map(len, per_tail)) + len(lines) < MAX_BATCH_LINES:
                records, lost = tail.read(self.read_bytes)
                if lost:
                    lines.append(LogLine(rank=tail.rank, stream=v.STDERR, time=now, text=lost))
                new = tail.admit(records, rate=self.rate, now=now, final=final and tail.caught_up)
                lines += new
                size += sum(len(line.text) for line in new)
                if not records and not lost:
                    break
            per_tail.append(lines)
        # Merged by time, each worker's lines in the order written: the run's order.
        merged = tuple(heapq.merge(*per_tail, key=lambda line: line.time))
        if merged:
            self.inflight = LogBatch(batch_id=uuid.uuid4().hex, job=self.job_id, lines=merged)
            self.save()

    @property
    def caught_up(self) -> bool:
        return self.inflight is None and all(t.caught_up for t in self.tails.values())

    async def ship(self, client: ControlPlaneClient) -> None:
        """Post the batch in flight; it stays in flight when the control plane cannot
        take it now (tried again after a backoff)."""
        batch = self.inflight
        if batch is None:
            return
        try:
            await client.send_logs(batch)
        except ApiError as exc:
            if exc.status < 500:
                log.error(
                    "job %s: log batch refused (%s); dropping %d lines",
                    self.job_id,
                    exc,
                    len(batch.lines),
                )
            else:
                self._backoff(exc)
                return
        except OSError as exc:
            self._backoff(exc)
            return
        self.inflight, self.failures = None, 0
        self.save()

    def _backoff(self, exc: Exception) -> None:
        self.failures += 1
        delay = min(0.2 * 2 ** (self.failures - 1), 5.0)
        self.retry_at = time.monotonic() + delay
        if self.failures in (1, 10) or self.failures % 100 == 0:
            log.warning("job %s: log upload failed (%s); retrying", self.job_id, exc)


class LogShipper:
    """Every job's log shipping on this node (see the module docstring)."""

    def __init__(
        self,
        client: ControlPlaneClient,
        state_dir: Path,
        *,
        flush_s: float,
        rate: int,
        read_bytes: int = READ_BYTES,
    ):
        self.client = client
        self.state_dir = state_dir
        self.flush_s = flush_s
        self.rate = rate
        self.read_bytes = read_bytes
        self.jobs: dict[int, JobLogs] = {}
        # Jobs whose output was shipped to the end (finish()), still listed by the agent
        # until it reported them: not to be read again from the start.
        self.finished: set[int] = set()

    def job(self, job_id: int) -> JobLogs:
        logs = self.jobs.get(job_id)
        if logs is None:
            logs = JobLogs(
                job_id,
                storage.log_shipping_path(self.state_dir, job_id),
                rate=self.rate,
                read_bytes=self.read_bytes,
            )
            self.jobs[job_id] = logs
        return logs

    async def run(self, jobs: Callable[[], Mapping[int, Iterable[LocalWorker]]]) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush(jobs())

    async def flush(self, jobs: Mapping[int, Iterable[LocalWorker]]) -> None:
        """Post what each job's workers wrote since the last flush."""
        self.finished &= set(jobs)
        await asyncio.gather(
            *(self._flush_job(job_id, workers) for job_id, workers in jobs.items())
        )

    async def _flush_job(self, job_id: int, workers: Iterable[LocalWorker]) -> None:
        if job_id in self.finished:
            return
        logs = self.job(job_id)
        if logs.lock.locked() or time.monotonic() < logs.retry_at:
            return
        async with logs.lock:
            if logs.inflight is None:
                logs.collect(workers)
            await logs.ship(self.client)

    async def finish(self, job_id: int, workers: list[LocalWorker]) -> None:
        """The job's workers here have ended: ship the rest of their output (once their
        keepers wrote it) before the job is reported, then forget the job's shipping."""
        deadline = time.monotonic() + KEEPER_EXIT_WAIT_S
        while any(not w.keeper_gone() for w in workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        logs = self.job(job_id)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        async with logs.lock:
            while time.monotonic() < deadline:
                if logs.inflight is None:
                    logs.collect(workers)
                    if logs.inflight is None and logs.caught_up:
                        break
                await asyncio.sleep(max(0.0, logs.retry_at - time.monotonic()))
                await logs.ship(self.client)
            else:
                log.warning(
                    "job %s: gave up shipping its last log lines after %.0f s; they are in %s",
                    job_id,
                    DRAIN_TIMEOUT_S,
                    ", ".join(str(t.path) for t in logs.tails.values()),
                )
            logs.forget()
            self.finished.add(job_id)
        self.jobs.pop(job_id, None)
