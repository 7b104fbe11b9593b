"""``adaptrain logs [-f] JOB``: what a job's workers printed."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any
from urllib.parse import urlencode

from adaptrain.cli.common import TERMINAL, client

LOG_PAGE = 1000


def _log_query(args: argparse.Namespace, run: int | None, **extra: Any) -> str:
    query = {"run": run, "worker": args.worker, "stream": args.stream, **extra}
    return urlencode({k: v for k, v in query.items() if v is not None})


def _show_line(line: dict[str, Any], *, merged: bool, as_json: bool) -> None:
    """A worker's line as it wrote it: stderr lines to stderr (marked ``!`` when merged),
    prefixed with the worker's rank when several workers' lines are merged."""
    if as_json:
        print(json.dumps(line), flush=True)
        return
    err = line["stream"] == "stderr"
    prefix = f"[rank {line['rank']}{'!' if err else ''}] " if merged else ""
    print(prefix + line["text"], file=sys.stderr if err else sys.stdout, flush=True)


def cmd_logs(args: argparse.Namespace) -> int:
    rest = client(args)
    base = f"/api/v1/jobs/{args.job}/logs/"
    merged = args.worker is None
    run = args.run  # pinned to the first answer's run: a follow stays on one run
    since = 0

    def fetch(**extra: Any) -> dict[str, Any]:
        nonlocal run, since
        page: dict[str, Any] = rest.call("GET", f"{base}?{_log_query(args, run, **extra)}")
        if run is None:
            run = page["run"]
        for line in page["lines"]:
            _show_line(line, merged=merged, as_json=args.json)
            since = max(since, line["seq"])
        return page

    def fetch_new() -> None:
        while fetch(since=since, limit=LOG_PAGE)["more"]:
            pass

    if args.tail is not None:
        fetch(tail=args.tail)
    else:
        fetch_new()
    if not args.follow:
        return 0
    while True:
        ended = rest.call("GET", f"/api/v1/jobs/{args.job}/")["status"] in TERMINAL
        if ended:
            time.sleep(args.interval)  # lines other nodes ship as their workers end
        fetch_new()
        if ended:
            return 0
        time.sleep(args.interval)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "logs",
        help="print a job's worker output (-f: follow it until the job ends)",
        description="Print what a job's workers wrote (one run; default the current one): "
        "every worker's lines merged in order, each prefixed with its rank ([rank 1] …; "
        "[rank 1!] for stderr), or one worker's with --worker. Lines from stderr go to "
        "stderr. Exit status: 0, or 1 on an error (-f: 0 once the job ended).",
    )
    p.add_argument("job", type=int)
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until the job ends"
    )
    p.add_argument("--run", type=int, help="the run's number (default: the current run)")
    p.add_argument("--worker", type=int, help="only this worker's lines (its number in the run)")
    p.add_argument("--stream", choices=["stdout", "stderr"], help="only this stream")
    p.add_argument("--tail", type=int, help="start with the last N lines (default: all)")
    p.add_argument(
        "--json", action="store_true", help="one JSON object per line (as the API gives them)"
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls with -f")
    p.set_defaults(func=cmd_logs)
