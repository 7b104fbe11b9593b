"""What every subcommand shares: the client, the saved settings, output as a table or
JSON, errors and exit statuses."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adaptrain.rest import RestClient

CONFIG_PATH = (
    Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "adaptrain" / "cli.json"
)
TERMINAL = {"succeeded", "failed", "cancelled"}

# Exit statuses (docs/api.md#command-line-adaptrain).
EXIT_OK = 0
EXIT_ERROR = 1  # the control plane refused the request, or a local problem: said on stderr
EXIT_USAGE = 2  # bad arguments (argparse's own)
EXIT_UNREACHABLE = 3  # the control plane did not answer
EXIT_JOB_UNSUCCESSFUL = 4  # watch: the job ended failed or cancelled
EXIT_INTERRUPTED = 130


class CliError(Exception):
    pass


def load_config() -> dict[str, Any]:
    try:
        data = json.loads(CONFIG_PATH.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def client(args: argparse.Namespace) -> RestClient:
    config = load_config()
    server = args.server or os.environ.get("ADAPTRAIN_SERVER") or config.get("server")
    token = args.token or os.environ.get("ADAPTRAIN_TOKEN") or config.get("token")
    if not server or not token:
        raise CliError(
            "no server or token: run `adaptrain login --server URL --token TOKEN` "
            "or set ADAPTRAIN_SERVER and ADAPTRAIN_TOKEN"
        )
    return RestClient(server, token)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None or value == "" else str(value)

    widths = {c: max([len(c)] + [len(cell(r.get(c))) for r in rows]) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(cell(r.get(c)).ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def show(
    args: argparse.Namespace,
    data: Any,
    rows: Sequence[dict[str, Any]] | None = None,
    columns: Sequence[str] = (),
) -> None:
    """Print what a read returned: as JSON with --json, else as a table of ``rows``
    (default: ``data`` itself) or, without columns, as indented JSON."""
    if getattr(args, "json", False) or not columns:
        print(json.dumps(data, indent=2))
        return
    print(table(list(data if rows is None else rows), columns))


def say(message: str) -> None:
    """Progress and confirmations that are not the command's output: on stderr."""
    print(message, file=sys.stderr, flush=True)


def parse_value(raw: str | None) -> Any:
    """A command line value as JSON when it is (64, 0.1, true, "x"), else the text."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def read_json_file(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"{path} is not JSON: {exc}") from None


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
