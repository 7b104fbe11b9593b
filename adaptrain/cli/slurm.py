"""``adaptrain slurm …``: agents on Slurm allocations (staff; docs/slurm.md).

adaptrain slurm up --nodes 2 --partition gpu --gres gpu:4 --time 8:00:00 [--wait]
adaptrain slurm list | adaptrain slurm show 3 | adaptrain slurm down 3
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from adaptrain.cli.common import CliError, add_json_flag, client, say, show

COLUMNS = ["id", "slurm_job_id", "status", "nodes", "partition", "gres", "time_limit", "node_names"]


def _row(a: dict[str, Any]) -> dict[str, Any]:
    return {**a, "node_names": ",".join(a.get("node_names") or [])}


def _online(args: argparse.Namespace, allocation: dict[str, Any]) -> int:
    names = set(allocation.get("node_names") or [])
    nodes = client(args).call("GET", "/api/v1/nodes/")
    return sum(1 for n in nodes if n["name"] in names and n["status"] == "online")


def cmd_up(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"nodes": args.nodes}
    for key in ("partition", "gres", "time_limit"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    allocation = client(args).call("POST", "/api/v1/slurm/allocations/", body)
    if not args.wait:
        if args.json:
            show(args, allocation)
        else:
            print(
                f"allocation {allocation['id']}: Slurm job {allocation['slurm_job_id']} "
                f"({allocation['status']})"
            )
        return
    deadline = time.monotonic() + args.wait_timeout
    while True:
        allocation = client(args).call("GET", f"/api/v1/slurm/allocations/{allocation['id']}/")
        if _online(args, allocation) >= args.nodes:
            break
        if allocation["status"] in ("ended", "failed"):
            raise CliError(
                f"allocation {allocation['id']} {allocation['status']} before its nodes came "
                f"online: {allocation['status_reason'] or 'see the batch job output'}"
            )
        if time.monotonic() > deadline:
            raise CliError(
                f"allocation {allocation['id']} (Slurm job {allocation['slurm_job_id']}): "
                f"not all {args.nodes} node(s) online after {args.wait_timeout:.0f} s "
                f"(status {allocation['status']}; squeue -j {allocation['slurm_job_id']})"
            )
        time.sleep(0.2)
    if args.json:
        show(args, allocation)
    else:
        print(
            f"allocation {allocation['id']}: Slurm job {allocation['slurm_job_id']}, "
            f"node(s) online: {', '.join(allocation['node_names'])}"
        )


def cmd_list(args: argparse.Namespace) -> None:
    allocations = client(args).call("GET", "/api/v1/slurm/allocations/")
    show(args, allocations, [_row(a) for a in allocations], COLUMNS)


def cmd_show(args: argparse.Namespace) -> None:
    allocation = client(args).call("GET", f"/api/v1/slurm/allocations/{args.id}/")
    show(args, allocation)


def cmd_down(args: argparse.Namespace) -> None:
    allocation = client(args).call("POST", f"/api/v1/slurm/allocations/{args.id}/release/", {})
    print(f"allocation {allocation['id']}: Slurm job {allocation['slurm_job_id']} cancelled")
    say("(its agents shrink their jobs' workers away, then go offline)")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    slurm = sub.add_parser(
        "slurm", help="agents on Slurm allocations: up, list, show, down (staff)"
    ).add_subparsers(dest="slurm_command", required=True, metavar="SUBCOMMAND")
    p = slurm.add_parser("up", help="submit a batch job that runs one agent per node")
    p.add_argument("--nodes", type=int, required=True, help="how many nodes to allocate")
    p.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    p.add_argument("--gres", help="generic resources per node, e.g. gpu:4")
    p.add_argument("--time", dest="time_limit", help="time limit, e.g. 8:00:00 or 2-00:00:00")
    p.add_argument("--wait", action="store_true", help="wait until every node is online")
    p.add_argument("--wait-timeout", type=float, default=600.0, help="seconds (default 600)")
    add_json_flag(p)
    p.set_defaults(func=cmd_up)
    p = slurm.add_parser("list", help="the allocations, newest first")
    add_json_flag(p)
    p.set_defaults(func=cmd_list)
    p = slurm.add_parser("show", help="one allocation")
    p.add_argument("id", type=int)
    add_json_flag(p)
    p.set_defaults(func=cmd_show)
    p = slurm.add_parser("down", help="cancel the allocation (scancel): its nodes leave")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_down)
