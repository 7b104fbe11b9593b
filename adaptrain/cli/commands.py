"""``adaptrain command JOB ACTION [VALUE]`` issues one; ``adaptrain commands JOB [ID]``
says where they stand."""

from __future__ import annotations

import argparse
from typing import Any

from adaptrain.cli.common import CliError, add_json_flag, client, parse_value, show

COMMAND_COLUMNS = [
    "id",
    "seq",
    "action",
    "value",
    "node",
    "state",
    "applied_step",
    "issued_by",
    "error",
]


def cmd_command(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"action": args.action}
    if args.value is not None:
        body["value"] = parse_value(args.value)
    if args.idempotency_key:
        body["idempotency_key"] = args.idempotency_key
    commands = client(args).call("POST", f"/api/v1/jobs/{args.job}/commands/", body)
    if args.json:
        show(args, commands)
        return
    print(
        f"issued {args.action} as command {commands[0]['id']} (seq {commands[0]['seq']}, "
        f"{len(commands)} node(s)); `adaptrain commands {args.job} {commands[0]['id']}` "
        f"says when it is applied"
    )


def _row(c: dict[str, Any]) -> dict[str, Any]:
    return {**c, "value": (c.get("payload") or {}).get("value")}


def cmd_commands(args: argparse.Namespace) -> None:
    commands = client(args).call("GET", f"/api/v1/jobs/{args.job}/commands/")
    if args.id is not None:
        mine = [c for c in commands if c["id"] == args.id]
        if not mine:
            raise CliError(f"job {args.job} has no command {args.id}")
        # The same seq went to every node of the job: show them all.
        commands = [c for c in commands if c["seq"] == mine[0]["seq"]]
    show(args, commands, [_row(c) for c in commands], COMMAND_COLUMNS)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("command", help="issue a command to a running job")
    p.add_argument("job", type=int)
    p.add_argument(
        "action",
        help="set_batch_size, set_lr, set_strategy, set_topology, scale_workers, checkpoint, "
        "pause, resume or stop",
    )
    p.add_argument("value", nargs="?", help='the value (JSON: 64, 0.01, "ring")')
    p.add_argument("--idempotency-key", help="a retry with the same key issues nothing new")
    add_json_flag(p)
    p.set_defaults(func=cmd_command)
    p = sub.add_parser(
        "commands", help="a job's commands and where they stand (one: its id; all nodes' copies)"
    )
    p.add_argument("job", type=int)
    p.add_argument("id", type=int, nargs="?")
    add_json_flag(p)
    p.set_defaults(func=cmd_commands)
