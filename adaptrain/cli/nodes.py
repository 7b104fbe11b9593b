"""``adaptrain nodes …`` and ``adaptrain join-tokens …``: the fleet (staff)."""

from __future__ import annotations

import argparse
from typing import Any

from adaptrain.cli.common import add_json_flag, client, say, show

NODE_COLUMNS = ["id", "name", "status", "address", "slots", "draining", "agent", "labels", "reason"]
TOKEN_COLUMNS = ["id", "label", "prefix", "state", "uses_left", "expires_at", "nodes"]


def _node_row(node: dict[str, Any]) -> dict[str, Any]:
    return {
        **node,
        "draining": "yes" if node["draining"] else "",
        "agent": node.get("agent_version") or "",
        "labels": ",".join(f"{k}={v}" for k, v in sorted((node.get("labels") or {}).items())),
        "reason": _reason(node),
    }


def _reason(node: dict[str, Any]) -> str:
    """The node's status reason; for an unreachable node first since when, as the job page
    says it ("unreachable since …")."""
    reason = node.get("status_reason") or ""
    if node["status"] == "unreachable" and node.get("unreachable_since"):
        return f"unreachable since {node['unreachable_since']}" + (f": {reason}" if reason else "")
    return reason


def _node_id(args: argparse.Namespace) -> int:
    """A node given by id or by name."""
    if str(args.node).isdigit():
        return int(args.node)
    nodes = client(args).call("GET", "/api/v1/nodes/")
    for node in nodes:
        if node["name"] == args.node:
            return int(node["id"])
    from adaptrain.cli.common import CliError

    raise CliError(f"no node named {args.node!r} (adaptrain nodes list shows them)")


def cmd_list(args: argparse.Namespace) -> None:
    nodes = client(args).call("GET", "/api/v1/nodes/")
    show(args, nodes, [_node_row(n) for n in nodes], NODE_COLUMNS)


def _node_action(args: argparse.Namespace, verb: str, done: str) -> None:
    node = client(args).call("POST", f"/api/v1/nodes/{_node_id(args)}/{verb}/", {})
    print(f"node {node['name']} {done} ({node['status']})")


def cmd_drain(args: argparse.Namespace) -> None:
    _node_action(args, "drain", "drained: no new workers go there")


def cmd_undrain(args: argparse.Namespace) -> None:
    _node_action(args, "resume", "takes new workers again")


def cmd_revoke(args: argparse.Namespace) -> None:
    _node_action(args, "revoke", "revoked: its credential is refused, its jobs go on without it")


def cmd_delete(args: argparse.Namespace) -> None:
    client(args).call("DELETE", f"/api/v1/nodes/{_node_id(args)}/")
    print(f"node {args.node} deleted")


def cmd_tokens_list(args: argparse.Namespace) -> None:
    tokens = client(args).call("GET", "/api/v1/join-tokens/")
    rows = [{**t, "nodes": ",".join(t.get("nodes") or [])} for t in tokens]
    show(args, tokens, rows, TOKEN_COLUMNS)


def cmd_tokens_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"label": args.label or ""}
    if args.uses is not None:
        body["uses"] = args.uses
    if args.expires_in_hours is not None:
        body["expires_in_hours"] = args.expires_in_hours
    token = client(args).call("POST", "/api/v1/join-tokens/", body)
    if args.json:
        show(args, token)
        return
    print(token["token"])
    say(
        f"(join token {token['id']}: {token['uses_allowed']} use(s), expires {token['expires_at']}; "
        f"the secret is shown only now — set it as AGENT_JOIN_TOKEN on the node)"
    )


def cmd_tokens_revoke(args: argparse.Namespace) -> None:
    client(args).call("DELETE", f"/api/v1/join-tokens/{args.id}/")
    print(f"join token {args.id} revoked")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    nodes = sub.add_parser("nodes", help="the nodes: list, drain, revoke, delete").add_subparsers(
        dest="nodes_command", required=True, metavar="SUBCOMMAND"
    )
    p = nodes.add_parser("list", help="every enrolled node with its status")
    add_json_flag(p)
    p.set_defaults(func=cmd_list)
    for name, func, helptext in (
        ("drain", cmd_drain, "no new workers go to the node; those running carry on"),
        ("undrain", cmd_undrain, "let the node take new workers again"),
        ("revoke", cmd_revoke, "refuse the node's credential; its jobs go on without it"),
        ("delete", cmd_delete, "remove a node that runs no worker"),
    ):
        p = nodes.add_parser(name, help=helptext)
        p.add_argument("node", help="the node's id or name")
        p.set_defaults(func=func)

    tokens = sub.add_parser(
        "join-tokens", help="tokens that let a machine enrol as a node (staff)"
    ).add_subparsers(dest="join_tokens_command", required=True, metavar="SUBCOMMAND")
    p = tokens.add_parser("list")
    add_json_flag(p)
    p.set_defaults(func=cmd_tokens_list)
    p = tokens.add_parser("create", help="print a new join token's secret")
    p.add_argument("--label")
    p.add_argument("--uses", type=int, help="how many enrolments it allows (default 1)")
    p.add_argument("--expires-in-hours", type=float, help="default 24")
    add_json_flag(p)
    p.set_defaults(func=cmd_tokens_create)
    p = tokens.add_parser("revoke")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_tokens_revoke)
