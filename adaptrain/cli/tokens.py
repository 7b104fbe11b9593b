"""``adaptrain login`` and ``adaptrain tokens …``: credentials."""

from __future__ import annotations

import argparse
import json
import os

from adaptrain.cli.common import CONFIG_PATH, add_json_flag, client, say, show
from adaptrain.rest import RestClient


def cmd_login(args: argparse.Namespace) -> None:
    rest = RestClient(args.login_server, args.login_token)
    rest.call("GET", "/api/v1/jobs/?limit=1")  # proves both server and token
    CONFIG_PATH.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(CONFIG_PATH, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"server": args.login_server, "token": args.login_token}, f)
    print(f"logged in to {args.login_server}; settings saved in {CONFIG_PATH}")


def cmd_tokens_list(args: argparse.Namespace) -> None:
    tokens = client(args).call("GET", "/api/v1/tokens/")
    show(args, tokens, tokens, ["id", "name", "prefix", "created_at", "expires_at", "revoked_at"])


def cmd_tokens_create(args: argparse.Namespace) -> None:
    body: dict[str, object] = {"name": args.name}
    if args.expires_in_days:
        body["expires_in_days"] = args.expires_in_days
    token = client(args).call("POST", "/api/v1/tokens/", body)
    print(token["token"])
    say(f"(token {token['id']} '{token['name']}': shown only now)")


def cmd_tokens_revoke(args: argparse.Namespace) -> None:
    token = client(args).call("DELETE", f"/api/v1/tokens/{args.id}/")
    print(f"token {token['id']} revoked")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("login", help="check and save the server URL and token")
    p.add_argument("--server", dest="login_server", required=True)
    p.add_argument("--token", dest="login_token", required=True)
    p.set_defaults(func=cmd_login)
    tokens = sub.add_parser("tokens", help="manage your API tokens").add_subparsers(
        dest="tokens_command", required=True, metavar="SUBCOMMAND"
    )
    p = tokens.add_parser("list")
    add_json_flag(p)
    p.set_defaults(func=cmd_tokens_list)
    p = tokens.add_parser("create")
    p.add_argument("name")
    p.add_argument("--expires-in-days", type=int)
    p.set_defaults(func=cmd_tokens_create)
    p = tokens.add_parser("revoke")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_tokens_revoke)
