"""``adaptrain policies …``: adaptation policies, their jobs and their decisions."""

from __future__ import annotations

import argparse
from typing import Any

from adaptrain.cli.common import CliError, add_json_flag, client, read_json_file, show

POLICY_COLUMNS = ["id", "name", "owner", "version", "enabled", "rules", "updated_at"]


def _definition(path: str) -> dict[str, Any]:
    """A policy definition from a file: the definition itself, or ``{"definition": …}``."""
    data = read_json_file(path)
    if isinstance(data, dict) and isinstance(data.get("definition"), dict):
        data = data["definition"]
    if not isinstance(data, dict):
        raise CliError(f"{path} must hold a policy definition (a JSON object with name and rules)")
    return data


def _row(policy: dict[str, Any]) -> dict[str, Any]:
    rules = policy["definition"].get("rules") or []
    return {**policy, "rules": ", ".join(str(r.get("name")) for r in rules)}


def cmd_list(args: argparse.Namespace) -> None:
    policies = client(args).call("GET", "/api/v1/policies/")
    show(args, policies, [_row(p) for p in policies], POLICY_COLUMNS)


def cmd_show(args: argparse.Namespace) -> None:
    show(args, client(args).call("GET", f"/api/v1/policies/{args.policy}/"))


def cmd_create(args: argparse.Namespace) -> None:
    policy = client(args).call("POST", "/api/v1/policies/", {"definition": _definition(args.file)})
    if args.json:
        show(args, policy)
    else:
        print(f"created policy {policy['id']} {policy['name']!r} (version {policy['version']})")


def cmd_update(args: argparse.Namespace) -> None:
    policy = client(args).call(
        "PUT", f"/api/v1/policies/{args.policy}/", {"definition": _definition(args.file)}
    )
    print(f"policy {policy['id']} {policy['name']!r} is now version {policy['version']}")


def cmd_validate(args: argparse.Namespace) -> None:
    answer = client(args).call(
        "POST", "/api/v1/policies/validate/", {"definition": _definition(args.file)}
    )
    print(f"valid: rules {', '.join(answer.get('rules', []))}")


def _set_enabled(args: argparse.Namespace, enabled: bool) -> None:
    policy = client(args).call("PUT", f"/api/v1/policies/{args.policy}/", {"enabled": enabled})
    print(f"policy {policy['id']} {policy['name']!r} {'enabled' if enabled else 'disabled'}")


def cmd_enable(args: argparse.Namespace) -> None:
    _set_enabled(args, True)


def cmd_disable(args: argparse.Namespace) -> None:
    _set_enabled(args, False)


def cmd_delete(args: argparse.Namespace) -> None:
    client(args).call("DELETE", f"/api/v1/policies/{args.policy}/")
    print(f"policy {args.policy} deleted")


def cmd_templates(args: argparse.Namespace) -> None:
    templates = client(args).call("GET", "/api/v1/policies/templates/")
    show(args, templates, templates, ["id", "name", "description"])


def cmd_attach(args: argparse.Namespace) -> None:
    answer = client(args).call("PUT", f"/api/v1/jobs/{args.job}/policy/", {"policy": args.policy})
    print(
        f"job {answer['job']} runs with policy {answer['policy']} (version {answer['policy_version']})"
    )


def cmd_detach(args: argparse.Namespace) -> None:
    client(args).call("PUT", f"/api/v1/jobs/{args.job}/policy/", {"policy": None})
    print(f"job {args.job} runs with no policy")


def cmd_dry_run(args: argparse.Namespace) -> None:
    """Replay a policy (saved, by id, or a definition file) on a job's recorded metrics."""
    body: dict[str, Any] = {"job": args.job}
    if args.run is not None:
        body["run"] = args.run
    rest = client(args)
    if args.policy.isdigit():
        result = rest.call("POST", f"/api/v1/policies/{args.policy}/replay/", body)
    else:
        body["definition"] = _definition(args.policy)
        result = rest.call("POST", "/api/v1/policies/replay/", body)
    if args.json:
        show(args, result)
        return
    if result["run"] is None:
        print(f"job {args.job} has no run yet: nothing to replay")
        return
    print(
        f"replayed on job {args.job} run {result['run']}: {result['ticks']} recorded step(s), "
        f"{result['evaluations']} evaluation(s), {len(result['decisions'])} decision(s)"
    )
    rows = [
        {
            "step": d["step"],
            "rule": d["rule"],
            "action": d["action"]["type"],
            "value": d["action"].get("value"),
        }
        for d in result["decisions"]
    ]
    if rows:
        print(show_table(rows))


def show_table(rows: list[dict[str, Any]]) -> str:
    from adaptrain.cli.common import table

    return table(rows, ["step", "rule", "action", "value"])


def cmd_decisions(args: argparse.Namespace) -> None:
    decisions = client(args).call("GET", f"/api/v1/jobs/{args.job}/decisions/")
    rows = [
        {
            **d,
            "action": f"{d['action']['type']} {d['action'].get('value') if d['action'].get('value') is not None else ''}".strip(),
        }
        for d in decisions
    ]
    show(args, decisions, rows, ["id", "step", "rule", "action", "outcome", "decided_by"])


def _resolve(args: argparse.Namespace, verb: str) -> None:
    decision = client(args).call(
        "POST", f"/api/v1/jobs/{args.job}/decisions/{args.decision}/{verb}/", {}
    )
    print(f"decision {decision['id']}: {decision['outcome']}")


def cmd_approve(args: argparse.Namespace) -> None:
    _resolve(args, "approve")


def cmd_reject(args: argparse.Namespace) -> None:
    _resolve(args, "reject")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    policies = sub.add_parser(
        "policies", help="adaptation policies: create from a file, attach to jobs, dry-run"
    ).add_subparsers(dest="policies_command", required=True, metavar="SUBCOMMAND")
    p = policies.add_parser("list", help="your policies (staff: everyone's)")
    add_json_flag(p)
    p.set_defaults(func=cmd_list)
    p = policies.add_parser("show", help="one policy with its definition")
    p.add_argument("policy", type=int)
    p.set_defaults(func=cmd_show, json=True)
    for name, func, helptext in (
        ("create", cmd_create, "create a policy from a JSON definition file (- for stdin)"),
        ("validate", cmd_validate, "check a definition file without saving it"),
    ):
        p = policies.add_parser(name, help=helptext)
        p.add_argument("file")
        add_json_flag(p)
        p.set_defaults(func=func)
    p = policies.add_parser("update", help="save a definition file as the policy's next version")
    p.add_argument("policy", type=int)
    p.add_argument("file")
    p.set_defaults(func=cmd_update)
    for name, func, helptext in (
        ("enable", cmd_enable, "evaluate the policy again on its jobs"),
        ("disable", cmd_disable, "stop evaluating the policy (its jobs keep running)"),
        ("delete", cmd_delete, "delete a policy no unfinished job uses"),
    ):
        p = policies.add_parser(name, help=helptext)
        p.add_argument("policy", type=int)
        p.set_defaults(func=func)
    p = policies.add_parser("templates", help="the built-in templates")
    add_json_flag(p)
    p.set_defaults(func=cmd_templates)
    p = policies.add_parser("attach", help="run a job with this policy from its next evaluation")
    p.add_argument("job", type=int)
    p.add_argument("policy", type=int)
    p.set_defaults(func=cmd_attach)
    p = policies.add_parser("detach", help="run a job without a policy")
    p.add_argument("job", type=int)
    p.set_defaults(func=cmd_detach)
    p = policies.add_parser(
        "dry-run",
        help="replay a policy (an id, or a definition file) on a job's recorded metrics",
    )
    p.add_argument("policy", help="a policy id, or a definition file")
    p.add_argument("--job", type=int, required=True)
    p.add_argument("--run", type=int, help="the run to replay (default: the current one)")
    add_json_flag(p)
    p.set_defaults(func=cmd_dry_run)
    p = policies.add_parser("decisions", help="a job's policy decisions")
    p.add_argument("job", type=int)
    add_json_flag(p)
    p.set_defaults(func=cmd_decisions)
    for name, func in (("approve", cmd_approve), ("reject", cmd_reject)):
        p = policies.add_parser(name, help=f"{name} a decision that waits for approval")
        p.add_argument("job", type=int)
        p.add_argument("decision", type=int)
        p.set_defaults(func=func)
