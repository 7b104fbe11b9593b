"""A worker's log file on its node: the format its log keeper writes
(:mod:`agent.daemon.logkeeper`), how the file is rotated, and what a failed worker's log
says (its first traceback, or its last lines) for the reason a job report or an
``exited`` event gives.

One record per line, as Kubernetes' container runtimes write them (CRI logging), so
both of a worker's streams share one file in the order they were written and every
line keeps the time it was written::

    2025-06-01T12:00:00.123456Z stdout F epoch 1: loss 0.42
    2025-06-01T12:00:00.125001Z stderr F Traceback (most recent call last):

The flag is ``F`` for a full line and ``P`` for the part of a line its writer had not
ended with a line break for a while (the rest follows as its own record). The file
``logs/job-<id>.rank-<n>.log`` is rotated to ``….log.1`` (replacing an older one) when
it would grow past its size cap.
"""

from __future__ import annotations

import calendar
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.protocol import vocabulary as v

FULL = b"F"
PARTIAL = b"P"
# The prefix of notes the node adds to a worker's output (a cut line, dropped lines).
NOTE = "[adaptrain]"
_STREAMS = {s.encode(): s for s in v.LOG_STREAMS}


@dataclass(frozen=True)
class Record:
    time: float  # unix seconds
    stream: str  # stdout or stderr
    text: bytes  # the line as the worker wrote it, without its line break
    partial: bool = False


def timestamp(t: float) -> bytes:
    """``t`` (unix seconds) as RFC 3339 in UTC with microseconds."""
    whole = int(t)
    micros = min(int((t - whole) * 1_000_000), 999_999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)).encode() + b".%06dZ" % micros


def format_record(t: float, stream: str, text: bytes, *, partial: bool = False) -> bytes:
    return stamped_record(timestamp(t), stream, text, partial=partial)


def stamped_record(stamp: bytes, stream: str, text: bytes, *, partial: bool = False) -> bytes:
    """A record with its time already formatted (:func:`timestamp`): lines read together
    share one."""
    return b"%s %s %s %s\n" % (stamp, stream.encode(), PARTIAL if partial else FULL, text)


_minutes: dict[bytes, int] = {}  # "YYYY-MM-DDTHH:MM" -> unix seconds (parsing is hot)


def _parse_time(raw: bytes) -> float:
    minute = raw[:16]
    base = _minutes.get(minute)
    if base is None:
        base = calendar.timegm(
            (int(raw[0:4]), int(raw[5:7]), int(raw[8:10]), int(raw[11:13]), int(raw[14:16]), 0)
        )
        if len(_minutes) > 1000:
            _minutes.clear()
        _minutes[minute] = base
    return base + int(raw[17:19]) + int(raw[20:26]) / 1_000_000


def parse_record(line: bytes) -> Record | None:
    """One line of a log file (without its line break) as a record; None when it is not
    one (a file of another format: such lines are skipped)."""
    parts = line.split(b" ", 3)
    if len(parts) < 3 or len(parts[0]) != 27 or parts[2] not in (FULL, PARTIAL):
        return None
    stream = _STREAMS.get(parts[1])
    if stream is None:
        return None
    try:
        t = _parse_time(parts[0])
    except ValueError:
        return None
    return Record(t, stream, parts[3] if len(parts) > 3 else b"", parts[2] == PARTIAL)


def previous_path(path: Path) -> Path:
    """Where the rotated-out file of ``path`` is kept (one previous file)."""
    return path.with_name(path.name + ".1")


def rotate(path: Path) -> None:
    """Move ``path`` aside to its previous file (replacing an older one), if it exists."""
    try:
        os.replace(path, previous_path(path))
    except FileNotFoundError:
        pass


def start_file(path: Path) -> int:
    """A new, empty log file for a worker about to start (an earlier worker's file under
    the same name, from an earlier run of the job, is rotated aside); returns its inode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rotate(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def text_of(record: Record) -> str:
    """A record's line as text: invalid UTF-8 and NUL characters (which PostgreSQL's text
    cannot hold) become U+FFFD, a trailing carriage return (CRLF output) is dropped."""
    text = record.text.decode("utf-8", "replace")
    if text.endswith("\r"):
        text = text[:-1]
    return text.replace("\x00", "\ufffd")


def last_records(path: str, max_bytes: int = 64 * 1024) -> list[Record]:
    """The last records of a log file (from at most its last ``max_bytes``)."""
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            raw = f.read()
    except OSError:
        return []
    lines = raw.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first one is probably cut
    records = (parse_record(line) for line in lines)
    return [r for r in records if r is not None]


def log_lines(rank: int, path: str) -> list[str]:
    """The last lines of worker ``rank``'s log (at most 300), each marked with the rank."""
    return [f"[rank {rank}] {text_of(r)}" for r in last_records(path)[-300:]]


def failure_excerpt(logs: Iterable[tuple[int, str]]) -> str:
    """The first traceback in the logs of these (rank, log path) workers if there is one,
    else their last lines."""
    lines = [line for rank, path in logs for line in log_lines(rank, path)]
    start = next(
        (i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line), None
    )
    if start is None:
        return "\n".join(lines[-12:])
    end = next(
        (
            j + 1
            for j in range(start + 1, len(lines))
            if lines[j].split("] ", 1)[-1][:1] not in (" ", "^", "") or j - start > 40
        ),
        len(lines),
    )
    return "\n".join(lines[start:end])
