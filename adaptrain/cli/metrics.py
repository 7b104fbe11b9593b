"""``adaptrain metrics JOB``: a job's latest values, followed live or exported whole."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from typing import Any, TextIO
from urllib.parse import urlencode

from adaptrain.cli.common import TERMINAL, CliError, client, show
from adaptrain.rest import RestClient

# Steps per request when exporting: fewer than the API's max_points, so no series is ever
# downsampled and the export is every point stored.
EXPORT_WINDOW_STEPS = 50_000
EXPORT_COLUMNS = ["run", "name", "rank", "step", "value", "time"]


def _series(rest: RestClient, args: argparse.Namespace, **query: Any) -> dict[str, Any]:
    params = {
        "names": args.names,
        "run": args.run,
        "per_rank": "true" if args.per_rank else "false",
        **query,
    }
    path = f"/api/v1/jobs/{args.job}/metrics/?" + urlencode(
        {k: v for k, v in params.items() if v is not None}
    )
    page: dict[str, Any] = rest.call("GET", path)
    return page


def _latest_rows(page: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for s in page["series"]:
        if s["value"]:
            rows.append(
                {
                    "name": s["name"],
                    "rank": "job" if s["rank"] is None else s["rank"],
                    "step": s["step"][-1],
                    "value": f"{s['value'][-1]:.6g}",
                }
            )
    return sorted(rows, key=lambda r: (r["name"], str(r["rank"])))


def cmd_metrics(args: argparse.Namespace) -> int:
    rest = client(args)
    if args.export:
        return _export(rest, args)
    while True:
        page = _series(rest, args, max_points=2)
        if args.json:
            show(args, page)
        else:
            print(f"job {args.job}, run {page['run']}:")
            print(show_rows(_latest_rows(page)))
        if not args.follow:
            return 0
        if rest.call("GET", f"/api/v1/jobs/{args.job}/")["status"] in TERMINAL:
            return 0
        time.sleep(args.interval)
        print()


def show_rows(rows: list[dict[str, Any]]) -> str:
    from adaptrain.cli.common import table

    return table(rows, ["name", "rank", "step", "value"]) if rows else "(no metrics yet)"


def _export(rest: RestClient, args: argparse.Namespace) -> int:
    job = rest.call("GET", f"/api/v1/jobs/{args.job}/")
    out: TextIO = sys.stdout
    if args.output and args.output != "-":
        try:
            out = open(args.output, "w", newline="")
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror}") from None
    try:
        writer = csv.writer(out)
        writer.writerow(EXPORT_COLUMNS)
        last = max(int(job["last_step"]), 0)
        rows = 0
        start = 0
        while True:
            page = _series(
                rest,
                args,
                since=start,
                until=start + EXPORT_WINDOW_STEPS - 1,
                max_points=100_000,
            )
            for s in page["series"]:
                rank = "" if s["rank"] is None else s["rank"]
                for step, value, when in zip(s["step"], s["value"], s["time"], strict=True):
                    writer.writerow([page["run"], s["name"], rank, step, repr(value), when])
                    rows += 1
            start += EXPORT_WINDOW_STEPS
            if start > last:
                break
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {rows} point(s) of job {args.job}", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "metrics",
        help="a job's latest metric values (-f to follow; --export csv for every point)",
        description="Without --export: the latest value of each metric (whole job; "
        "--per-rank adds each worker's). With --export csv: every stored point of the run "
        "as CSV (run,name,rank,step,value,time; rank empty for the whole job's series), "
        "to stdout or --output.",
    )
    p.add_argument("job", type=int)
    p.add_argument("--names", help="comma-separated metric names (default: all)")
    p.add_argument("--run", type=int, help="the run's number (default: the current run)")
    p.add_argument("--per-rank", action="store_true", help="also each worker's series")
    p.add_argument("-f", "--follow", action="store_true", help="print again until the job ends")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between prints with -f")
    p.add_argument("--export", choices=["csv"], help="every point, as CSV")
    p.add_argument("--output", "-o", help="file for --export (default: stdout)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(func=cmd_metrics)
