"""Reads of stored log lines, one run of a job at a time: a page forward from a line
number (``since``), or a run's last lines (``tail``); all workers' lines merged in their
run's order, or one worker's, or one stream's."""

from __future__ import annotations

from typing import Any

from controlplane.logs.models import LogLine, RunLog


def run_log_summary(run_id: int) -> dict[str, int]:
    """The run's line numbers so far: ``first_seq`` (the oldest kept), ``last_seq`` and
    ``trimmed`` (lines the size cap removed)."""
    row = RunLog.objects.filter(run_id=run_id).values("first_seq", "last_seq", "trimmed_lines")
    found = row.first() or {"first_seq": 1, "last_seq": 0, "trimmed_lines": 0}
    return {
        "first_seq": found["first_seq"],
        "last_seq": found["last_seq"],
        "trimmed": found["trimmed_lines"],
    }


def run_log_lines(
    *,
    run_id: int,
    rank: int | None = None,
    stream: str | None = None,
    since: int | None = None,
    tail: int | None = None,
    limit: int = 1000,
) -> tuple[list[dict[str, Any]], bool]:
    """The run's lines in order — the last ``tail`` of them, or else up to ``limit`` after
    line ``since`` — and whether more follow the last one returned."""
    qs = LogLine.objects.filter(run_id=run_id)
    if rank is not None:
        qs = qs.filter(rank=rank)
    if stream is not None:
        qs = qs.filter(stream=stream)
    fields = ("seq", "rank", "stream", "time", "text")
    if tail is not None:
        rows = list(qs.order_by("-seq").values_list(*fields)[:tail])[::-1]
        more = False
    else:
        if since:
            qs = qs.filter(seq__gt=since)
        rows = list(qs.order_by("seq").values_list(*fields)[: limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
    lines = [
        {"seq": seq, "rank": r, "stream": s, "time": t.timestamp(), "text": text}
        for seq, r, s, t, text in rows
    ]
    return lines, more
