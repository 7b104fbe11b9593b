"""Log ingest (check a batch from an agent, number its lines within their run, store them
in bulk, keep the run under its size cap, push them live) and retention."""

from __future__ import annotations

import csv
import io
import math
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from agent.protocol import ProtocolError
from agent.protocol.rest import LogBatch as LogBatchBody
from agent.protocol.rest import LogLine as LogLineBody
from controlplane.errors import InvalidInput, NotFound, PayloadTooLarge
from controlplane.jobs import selectors as job_selectors
from controlplane.jobs.models import Job, Node
from controlplane.live import channels
from controlplane.logs.models import LogBatch, LogLine, RunLog

MAX_RANK = 2**31 - 1
MAX_TIME = 32503680000.0  # year 3000: later timestamps are bugs, not measurements
# A run over its size cap loses its oldest lines down to this share of the cap, so that
# trimming happens once per tenth of the cap ingested, not on every batch.
TRIM_TO = 0.9
# The text a log frame carries at most: a flood reaches browsers as its newest lines
# (the frame says how many it skipped; the REST API has them all).
FRAME_MAX_BYTES = 32 * 1024
# Ingested batch ids are kept this long: a retry of a stored batch comes within it.
BATCH_ID_TTL = timedelta(days=1)


def _check(batch: LogBatchBody) -> None:
    if not 1 <= len(batch.batch_id) <= 64:
        raise InvalidInput("batch_id must be a string of 1 to 64 characters.")
    if not batch.lines:
        raise InvalidInput("lines is empty: a batch holds at least one line.")
    if len(batch.lines) > settings.LOG_BATCH_MAX_LINES:
        raise PayloadTooLarge(
            f"A batch holds at most {settings.LOG_BATCH_MAX_LINES} lines; "
            f"this one has {len(batch.lines)}. Split it.",
            details={"max_lines": settings.LOG_BATCH_MAX_LINES},
        )
    for i, line in enumerate(batch.lines):
        problem = None
        if not 0 <= line.rank <= MAX_RANK:
            problem = "rank must be a non-negative integer"
        elif not (math.isfinite(line.time) and 0 <= line.time <= MAX_TIME):
            problem = "time must be a unix timestamp in seconds (1970 to 3000)"
        elif len(line.text) > settings.LOG_LINE_MAX_CHARS:
            problem = f"text is longer than {settings.LOG_LINE_MAX_CHARS} characters: cut it"
        if problem:
            raise InvalidInput(f"lines[{i}]: {problem}.", details={"index": i})


def logs_ingest(*, node: Node, data: Any) -> int:
    """Store one batch (a :class:`agent.protocol.rest.LogBatch`); returns the number of
    lines stored (0 for a batch stored before). The whole batch is checked before
    anything is written; the lines are filed under the run whose workers on ``node``
    report for the job (``jobs.selectors.runs_reporting``)."""
    try:
        batch = LogBatchBody.from_dict(data)
    except ProtocolError as exc:
        raise InvalidInput(f"{exc} (see docs/protocols.md)") from None
    _check(batch)
    run = job_selectors.runs_reporting(node, {batch.job}).get(batch.job)
    if run is None:
        raise NotFound(
            f"No workers of job {batch.job} run on node {node.name}.",
            details={"job": batch.job},
        )
    # NUL cannot be stored in PostgreSQL text; the agent replaces it already.
    texts = [line.text.replace("\x00", "\ufffd") for line in batch.lines]
    size = sum(len(text.encode()) for text in texts)
    try:
        with transaction.atomic():
            LogBatch.objects.create(batch_id=batch.batch_id, node=node, lines=len(texts))
            last_seq, stored_bytes = _take_numbers(run.id, len(texts), size)
            first = last_seq - len(texts) + 1
            _copy_lines(run.id, first, batch.lines, texts)
            cap = settings.LOG_MAX_BYTES_PER_RUN
            if cap and stored_bytes > cap:
                _trim(run.id, stored_bytes - int(cap * TRIM_TO))
            transaction.on_commit(
                lambda: _publish(batch.job, run.number, first, batch.lines, texts)
            )
    except IntegrityError:
        if LogBatch.objects.filter(batch_id=batch.batch_id).exists():
            return 0  # a retry of a batch already stored
        raise
    return len(texts)


def _take_numbers(run_id: int, count: int, size: int) -> tuple[int, int]:
    """Give ``count`` line numbers of the run out; the run's counter row stays locked
    until the transaction ends, so the run's lines commit in number order. Returns the
    last number taken and the bytes the run now holds."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {RunLog._meta.db_table} (run_id, last_seq, bytes, first_seq, trimmed_lines)
            VALUES (%s, %s, %s, 1, 0)
            ON CONFLICT (run_id) DO UPDATE SET
                last_seq = {RunLog._meta.db_table}.last_seq + EXCLUDED.last_seq,
                bytes = {RunLog._meta.db_table}.bytes + EXCLUDED.bytes
            RETURNING last_seq, bytes
            """,
            [run_id, count, size],
        )
        last_seq, stored = cursor.fetchone()
    return int(last_seq), int(stored)


def _copy_lines(run_id: int, first: int, lines: tuple[LogLineBody, ...], texts: list[str]) -> None:
    """Bulk insert with COPY (CSV, which quotes whatever a line holds)."""
    buffer = io.StringIO()
    write = csv.writer(buffer).writerow
    for seq, (line, text) in enumerate(zip(lines, texts, strict=True), start=first):
        when = datetime.fromtimestamp(line.time, tz=dt_timezone.utc).isoformat()
        write((run_id, seq, line.rank, line.stream, when, text))
    buffer.seek(0)
    with connection.cursor() as cursor:
        cursor.copy_expert(
            f"COPY {LogLine._meta.db_table} (run_id, seq, rank, stream, time, text) "
            "FROM STDIN WITH (FORMAT csv, FORCE_NOT_NULL (text))",
            buffer,
        )


def _trim(run_id: int, excess: int) -> None:
    """Remove the run's oldest lines, at least ``excess`` bytes of them."""
    table = LogLine._meta.db_table
    with connection.cursor() as cursor:
        # A running sum along the primary key, stopped at the first line that is enough.
        cursor.execute(
            f"""
            SELECT seq FROM (
                SELECT seq, sum(octet_length(text)) OVER (ORDER BY seq) AS total
                FROM {table} WHERE run_id = %s
            ) running WHERE total >= %s ORDER BY seq LIMIT 1
            """,
            [run_id, excess],
        )
        row = cursor.fetchone()
        if row is None:
            return
        last = int(row[0])
        cursor.execute(
            f"""
            WITH gone AS (
                DELETE FROM {table} WHERE run_id = %s AND seq <= %s
                RETURNING octet_length(text) AS size
            )
            SELECT count(*), coalesce(sum(size), 0) FROM gone
            """,
            [run_id, last],
        )
        lines, size = cursor.fetchone()
    RunLog.objects.filter(run_id=run_id).update(
        bytes=F("bytes") - int(size),
        first_seq=last + 1,
        trimmed_lines=F("trimmed_lines") + int(lines),
    )


def line_json(seq: int, line: LogLineBody, text: str) -> dict[str, Any]:
    """A stored line as the REST API and the ``log`` frame give it."""
    return {"seq": seq, "rank": line.rank, "stream": line.stream, "time": line.time, "text": text}


def _publish(
    job_id: int, run_number: int, first: int, lines: tuple[LogLineBody, ...], texts: list[str]
) -> None:
    """One ``log`` frame: ``{"run", "lines": [...], "skipped"}`` — the batch's newest
    lines within :data:`FRAME_MAX_BYTES`, and how many older ones it left out."""
    kept: list[dict[str, Any]] = []
    size = 0
    for i in range(len(lines) - 1, -1, -1):
        size += len(texts[i]) + 64
        if kept and size > FRAME_MAX_BYTES:
            break
        kept.append(line_json(first + i, lines[i], texts[i]))
    kept.reverse()
    channels.publish_to_job(
        job_id,
        channels.FRAME_LOG,
        {"run": run_number, "lines": kept, "skipped": len(lines) - len(kept)},
    )


def logs_apply_retention(*, days: float, chunk: int = 50_000) -> int:
    """Delete the log lines of jobs that ended more than ``days`` ago, in chunks so no
    single statement holds locks for long (running jobs keep everything). Returns the
    number of lines deleted."""
    cutoff = timezone.now() - timedelta(days=days)
    runs = RunLog.objects.filter(
        run__job__status__in=Job.TERMINAL, run__job__finished_at__lt=cutoff, bytes__gt=0
    ).values_list("run_id", "first_seq", "last_seq")
    deleted = 0
    for run_id, first_seq, last_seq in runs:
        for start in range(first_seq, last_seq + 1, chunk):
            deleted += LogLine.objects.filter(
                run_id=run_id, seq__gte=start, seq__lt=start + chunk
            ).delete()[0]
        RunLog.objects.filter(run_id=run_id).update(bytes=0, first_seq=last_seq + 1)
    return deleted


def log_batches_forget() -> int:
    """Forget the ids of batches stored more than :data:`BATCH_ID_TTL` ago."""
    return LogBatch.objects.filter(received_at__lt=timezone.now() - BATCH_ID_TTL).delete()[0]
