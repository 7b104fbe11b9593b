"""What a failed worker's log says: its first traceback, or its last lines, for the
reason a job report or an ``exited`` event gives."""

from __future__ import annotations

import os
from collections.abc import Iterable


def log_lines(rank: int, path: str, max_bytes: int = 64 * 1024) -> list[str]:
    """The last lines of worker ``rank``'s log (at most ``max_bytes``, 300 lines), each
    marked with the rank."""
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
    lines = raw.decode(errors="replace").splitlines()
    if size > max_bytes:
        lines = lines[1:]  # the first one is probably cut
    return [f"[rank {rank}] {line}" for line in lines[-300:]]


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
