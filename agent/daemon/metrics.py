"""Metric points from the workers, spooled on disk and posted to the control plane in
batches, so that neither an unreachable control plane nor a killed agent loses a point
or stores one twice.

Each ``metrics`` line a worker writes is appended to ``metrics/spool.jsonl`` under
``AGENT_STATE_DIR`` (one record per line: an increasing id, the job, the worker and the
line's number) *before* the agent acknowledges the line to the worker; a line the agent
did not acknowledge is written again by the worker to the next agent
(:mod:`agent.runtime.channel`), and one spooled but not acknowledged (the agent died in
between) is recognised by its number (:meth:`MetricShipper.handled`), so it is spooled
once. A batch is written to ``metrics/sending.json`` with its id before it is posted and
keeps that id across retries and restarts until the control plane stored it (the
control plane stores a batch id once), and the file then records how far the spool is
posted. While the control plane cannot be reached the points wait on disk, at most
``MAX_BUFFERED_POINTS`` (the oldest dropped beyond, with a warning); a restarted agent
reads them back and posts them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptrain.rest import ApiError
from agent.daemon.client import ControlPlaneClient
from agent.daemon.storage import metrics_dir, write_json_atomically
from agent.protocol.worker import MetricPoint

log = logging.getLogger("agent")

MAX_BUFFERED_POINTS = 200_000
MAX_BATCH_POINTS = 5_000
# The spool file is rewritten without the posted records once this many are posted.
COMPACT_RECORDS = 2_000

# Where a metrics line came from: (job, the worker's number in the job, the line's number).
Source = tuple[int, int, int]


@dataclass
class _Record:
    id: int
    job: int | None
    rank: int | None
    n: int | None
    points: list[dict[str, Any]]

    def to_line(self) -> str:
        record = {"id": self.id, "job": self.job, "rank": self.rank, "n": self.n}
        return json.dumps({**record, "points": self.points}, separators=(",", ":")) + "\n"


class MetricShipper:
    def __init__(self, client: ControlPlaneClient, flush_s: float, state_dir: Path | None = None):
        self.client = client
        self.flush_s = flush_s
        self.dir = metrics_dir(state_dir) if state_dir is not None else None
        self.records: collections.deque[_Record] = collections.deque()
        self.buffered = 0  # points in self.records
        self.next_id = 1
        self.posted = 0  # spool records up to this id are posted (or dropped)
        self.spooled_posted = 0  # posted records still in the spool file
        # The batch being posted: (id, the last record it holds, its points).
        self.sending: tuple[str, int, list[dict[str, Any]]] | None = None
        self._marks: dict[tuple[int, int], int] = {}  # (job, rank) -> highest line number
        self._spool: Any = None
        self._lock = asyncio.Lock()
        if self.dir is not None:
            self._load()

    # -- the spool on disk ----------------------------------------------------------------
    @property
    def points(self) -> list[dict[str, Any]]:
        """Every point not yet stored by the control plane, oldest first."""
        pending = list(self.sending[2]) if self.sending else []
        return pending + [p for r in self.records for p in r.points]

    def _spool_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "spool.jsonl"

    def _sending_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "sending.json"

    def _load(self) -> None:
        """Read back what a previous agent spooled and had not posted."""
        try:
            state = json.loads(self._sending_path().read_text())
            self.posted = int(state["posted"])
            if state.get("batch"):
                self.sending = (str(state["batch"]), int(state["upto"]), list(state["points"]))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("cannot read %s (%s); posting the whole spool", self._sending_path(), exc)
        upto = self.sending[1] if self.sending else self.posted
        self.next_id = upto + 1
        try:
            with open(self._spool_path()) as f:
                for raw in f:
                    try:
                        d = json.loads(raw)
                        record = _Record(
                            int(d["id"]), d.get("job"), d.get("rank"), d.get("n"), d["points"]
                        )
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a kill: its worker writes it again
                    self._mark(record)
                    self.next_id = max(self.next_id, record.id + 1)
                    if record.id <= upto:
                        self.spooled_posted += 1
                        continue
                    self.records.append(record)
                    self.buffered += len(record.points)
        except FileNotFoundError:
            pass
        if self.records or self.sending:
            log.info(
                "%d metric point(s) a previous agent could not post are read back from %s",
                len(self.points),
                self.dir,
            )

    def _mark(self, record: _Record) -> None:
        if record.job is not None and record.rank is not None and record.n is not None:
            key = (record.job, record.rank)
            self._marks[key] = max(self._marks.get(key, 0), record.n)

    def handled(self, job: int, rank: int) -> int:
        """The number of the last metrics line of worker ``rank`` of ``job`` that is spooled
        (0: none): a line up to it written again by the worker is not spooled twice."""
        return self._marks.get((job, rank), 0)

    def _append(self, record: _Record) -> None:
        if self.dir is None:
            return
        try:
            if self._spool is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._spool = open(self._spool_path(), "a")
            # Written through to the kernel: a killed agent leaves it (no fsync: a crash of
            # the machine ends the workers too).
            self._spool.write(record.to_line())
            self._spool.flush()
        except OSError as exc:
            log.warning("cannot spool metric points on disk (%s); they are kept in memory", exc)

    def _rewrite_spool(self) -> None:
        """The spool file with only the records not posted (atomically)."""
        if self.dir is None:
            return
        path = self._spool_path()
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "w") as f:
                f.writelines(r.to_line() for r in self.records)
            if self._spool is not None:
                self._spool.close()
                self._spool = None
            os.replace(tmp, path)
            self.spooled_posted = 0
        except OSError as exc:
            log.warning("cannot rewrite the metric spool (%s)", exc)

    def _write_sending(self) -> None:
        if self.dir is None:
            return
        batch, upto, points = self.sending or (None, self.posted, [])
        try:
            write_json_atomically(
                self._sending_path(),
                {"batch": batch, "upto": upto, "points": points, "posted": self.posted},
                durable=False,
            )
        except OSError as exc:
            log.warning("cannot write %s (%s)", self._sending_path(), exc)

    # -- taking points ----------------------------------------------------------------------
    def add(self, points: list[MetricPoint], source: Source | None = None) -> None:
        """Spool points a worker sent (``source``: its job, number and the line's number)."""
        job, rank, n = source if source is not None else (None, None, None)
        dicts = [p.to_dict() for p in points]
        for i in range(0, len(dicts), MAX_BATCH_POINTS):
            record = _Record(self.next_id, job, rank, n, dicts[i : i + MAX_BATCH_POINTS])
            self.next_id += 1
            self._append(record)
            self._mark(record)
            self.records.append(record)
            self.buffered += len(record.points)
        overflow = 0
        while self.buffered > MAX_BUFFERED_POINTS and len(self.records) > 1:
            dropped = self.records.popleft()
            self.buffered -= len(dropped.points)
            overflow += len(dropped.points)
        if overflow:
            log.warning("metric buffer full: dropped the %d oldest points", overflow)
            self._rewrite_spool()

    # -- posting ----------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            await self._flush_locked()

    def _next_batch(self) -> None:
        points: list[dict[str, Any]] = []
        upto = self.posted
        while self.records and len(points) + len(self.records[0].points) <= MAX_BATCH_POINTS:
            record = self.records.popleft()
            self.buffered -= len(record.points)
            points.extend(record.points)
            upto = record.id
        self.sending = (uuid.uuid4().hex, upto, points)
        self._write_sending()

    async def _flush_locked(self) -> None:
        while self.sending or self.records:
            if self.sending is None:
                self._next_batch()
            assert self.sending is not None
            batch_id, upto, points = self.sending
            for attempt in range(8):
                try:
                    await self.client.send_metrics(
                        batch_id, [MetricPoint.from_dict(p) for p in points]
                    )
                    break
                except ApiError as exc:
                    if 400 <= exc.status < 500:
                        log.error(
                            "metric batch rejected (%s); dropping %d points", exc, len(points)
                        )
                        break
                    await asyncio.sleep(min(0.2 * 2**attempt, 5))
                except OSError as exc:
                    log.warning("metric upload failed (%s); retrying", exc)
                    await asyncio.sleep(min(0.2 * 2**attempt, 5))
            else:
                return  # kept (on disk too); the next flush tries again with the same id
            self.spooled_posted += upto - self.posted
            self.posted, self.sending = upto, None
            self._write_sending()
            if self.spooled_posted >= COMPACT_RECORDS:
                self._rewrite_spool()

    def close(self) -> None:
        if self._spool is not None:
            with contextlib.suppress(OSError):
                self._spool.close()
            self._spool = None
