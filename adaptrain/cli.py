"""``adaptrain``: drive the control plane from a terminal over its REST API.

    adaptrain login --server http://127.0.0.1:8000 --token tok_...
    adaptrain jobs create --name digits --batch-size 32 --lr 0.05 --steps 5000 --workers 2
    adaptrain jobs list [--status running]
    adaptrain jobs watch 7
    adaptrain logs -f 7 [--worker 0] [--tail 100]
    adaptrain command 7 set_batch_size 64
    adaptrain jobs cancel 7
    adaptrain run ./my_project --entrypoint train:main --workers 2 --batch-size 64 --lr 0.05 \
        --policy gns-adaptive-batch
    adaptrain tokens create laptop --expires-in-days 30

The server and token come from ``--server``/``--token``, else ``ADAPTRAIN_SERVER`` /
``ADAPTRAIN_TOKEN``, else the file ``adaptrain login`` wrote
(``~/.config/adaptrain/cli.json``, mode 0600). Exit status: 0 on success, 1 on an error
(said on stderr), 130 when interrupted; ``jobs watch`` exits 1 when the job did not
succeed. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from adaptrain.bundle import BundleError, pack
from adaptrain.rest import ApiError, RestClient, Unreachable

CONFIG_PATH = (
    Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "adaptrain" / "cli.json"
)
TERMINAL = {"succeeded", "failed", "cancelled"}
POLICY_HELP = (
    "the policy to attach: its id or name, or a built-in template's id (e.g. "
    "gns-adaptive-batch: a policy is made from it the first time)"
)


class CliError(Exception):
    pass


def _load_config() -> dict:
    try:
        return json.loads(CONFIG_PATH.read_text())
    except (OSError, ValueError):
        return {}


def _client(args) -> RestClient:
    config = _load_config()
    server = args.server or os.environ.get("ADAPTRAIN_SERVER") or config.get("server")
    token = args.token or os.environ.get("ADAPTRAIN_TOKEN") or config.get("token")
    if not server or not token:
        raise CliError(
            "no server or token: run `adaptrain login --server URL --token TOKEN` "
            "or set ADAPTRAIN_SERVER and ADAPTRAIN_TOKEN"
        )
    return RestClient(server, token)


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def cmd_login(args) -> None:
    client = RestClient(args.server, args.token)
    client.call("GET", "/api/v1/jobs/?limit=1")  # proves both server and token
    CONFIG_PATH.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(CONFIG_PATH, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"server": args.server, "token": args.token}, f)
    print(f"logged in to {args.server}; settings saved in {CONFIG_PATH}")


def _job_row(job: dict) -> dict:
    p = job["parameters"]
    return {
        "id": job["id"],
        "name": job["name"],
        "status": job["status"],
        "step": job["last_step"],
        "batch_size": p["batch_size"],
        "lr": p["lr"],
        "workers": p["workers"],
    }


def cmd_jobs_list(args) -> None:
    path = "/api/v1/jobs/?limit=200" + (f"&status={args.status}" if args.status else "")
    jobs = _client(args).call("GET", path)["results"]
    print(
        _table(
            [_job_row(j) for j in jobs],
            ["id", "name", "status", "step", "batch_size", "lr", "workers"],
        )
    )


def cmd_jobs_show(args) -> None:
    print(json.dumps(_client(args).call("GET", f"/api/v1/jobs/{args.job}/"), indent=2))


def _policy_id(client: RestClient, spec: str | None) -> int | None:
    """The policy ``--policy`` names: an id; the name of a policy of yours (or one you
    can see); or a built-in template's id (``gns-adaptive-batch``), from which a policy
    of the template's name is made the first time and used again after that."""
    if spec is None or spec == "":
        return None
    if spec.isdigit():
        return int(spec)
    policies = client.call("GET", "/api/v1/policies/")
    named = [p for p in policies if p["name"] == spec]
    if len(named) > 1:
        ids = ", ".join(str(p["id"]) for p in named)
        raise CliError(f"several policies are named {spec!r} (ids {ids}): give the id")
    if named:
        return int(named[0]["id"])
    templates = client.call("GET", "/api/v1/policies/templates/")
    template = next((t for t in templates if t["id"] == spec), None)
    if template is None:
        known = ", ".join(t["id"] for t in templates)
        raise CliError(
            f"no policy is named {spec!r}, and it is no template's id ({known}); give a "
            "policy's id or name (GET /api/v1/policies/)"
        )
    made = [p for p in policies if p["name"] == template["name"]]
    if made:
        return int(made[0]["id"])
    policy = client.call("POST", "/api/v1/policies/", {"definition": template["definition"]})
    print(
        f"created policy {policy['id']} ({policy['name']!r}) from template {spec}",
        file=sys.stderr,
    )
    return int(policy["id"])


def cmd_jobs_create(args) -> None:
    if args.file:
        body = json.loads(Path(args.file).read_text())
    else:
        if args.name is None or args.batch_size is None or args.lr is None:
            raise CliError("give --file, or at least --name, --batch-size and --lr")
        hyper = {"batch_size": args.batch_size, "lr": args.lr}
        if args.steps is not None:
            hyper["steps"] = args.steps
        body = {
            "name": args.name,
            "entrypoint": args.entrypoint,
            "hyperparameters": hyper,
            "workers": {"initial": args.workers},
        }
        body["policy"] = _policy_id(_client(args), args.policy)
    job = _client(args).call("POST", "/api/v1/jobs/", body)
    print(f"created job {job['id']} ({job['status']})")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cmd_run(args) -> int:
    """Pack a project, upload it unless the control plane has that content, start a job."""
    try:
        bundle = pack(args.project, limit_bytes=int(args.max_size_mb * 1024 * 1024))
    except BundleError as exc:
        raise CliError(str(exc)) from None
    print(
        f"packed {len(bundle.files)} file(s) from {args.project} "
        f"({_human_bytes(bundle.unpacked_bytes)}, archive {_human_bytes(bundle.size)}, "
        f"sha256 {bundle.digest[:12]})",
        file=sys.stderr,
    )
    client = _client(args)
    policy = _policy_id(client, args.policy)  # a wrong name is said before any upload
    status, _ = client.request("GET", f"/api/v1/bundles/{bundle.digest}/")
    if status == 200:
        print("the control plane has this code already: nothing to upload", file=sys.stderr)
    else:
        client.call(
            "POST",
            f"/api/v1/bundles/?digest={bundle.digest}",
            data=bundle.data,
            content_type="application/gzip",
        )
        print(f"uploaded {_human_bytes(bundle.size)}", file=sys.stderr)
    hyper: dict[str, Any] = json.loads(args.hyperparameters) if args.hyperparameters else {}
    for key, value in (("batch_size", args.batch_size), ("lr", args.lr), ("steps", args.steps)):
        if value is not None:
            hyper[key] = value
    workers = {"initial": args.workers}
    if args.min_workers is not None:
        workers["min"] = args.min_workers
    if args.max_workers is not None:
        workers["max"] = args.max_workers
    body: dict[str, Any] = {
        "name": args.name or Path(args.project).resolve().name,
        "entrypoint": args.entrypoint,
        "bundle": bundle.digest,
        "hyperparameters": hyper,
        "workers": workers,
        "policy": policy,
    }
    for key in ("strategy", "topology"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    job = client.call("POST", "/api/v1/jobs/", body)
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        print(f"created job {job['id']} ({job['status']}): {client.server}/jobs/{job['id']}/")
    if args.watch:
        args.job = job["id"]
        return cmd_jobs_watch(args)
    return 0


def cmd_jobs_cancel(args) -> None:
    job = _client(args).call("POST", f"/api/v1/jobs/{args.job}/cancel/", {})
    print(f"job {job['id']} is {job['status']}")


def cmd_jobs_runs(args) -> None:
    runs = _client(args).call("GET", f"/api/v1/jobs/{args.job}/runs/?limit=200")["results"]
    rows = [
        {
            **r,
            "resumed_from": r["resumed_from"] or "-",
            "started_at": r["started_at"] or "-",
            "finished_at": r["finished_at"] or "-",
            "reason": r["status_reason"],
        }
        for r in runs
    ]
    print(_table(rows, ["number", "status", "started_at", "finished_at", "resumed_from", "reason"]))


def cmd_jobs_restart(args) -> None:
    body: dict[str, Any] = {}
    if args.from_scratch:
        body["resume_from"] = None
    elif args.resume_from:
        body["resume_from"] = args.resume_from
    if args.reason:
        body["reason"] = args.reason
    run = _client(args).call("POST", f"/api/v1/jobs/{args.job}/restart/", body)
    print(f"job {args.job}: run {run['number']} {run['status']}; {run['resume_note']}")


def cmd_jobs_watch(args) -> int:
    client = _client(args)
    last_line, seen_events = None, 0
    while True:
        job = client.call("GET", f"/api/v1/jobs/{args.job}/")
        events = client.call("GET", f"/api/v1/jobs/{args.job}/events/?after={seen_events}")
        for e in events:
            seen_events = max(seen_events, e["id"])
            print(f"  event: {e['actor']}: {e['message']}", flush=True)
        # The current run's (the metrics endpoint's default): a restart counts steps again.
        metrics = client.call(
            "GET",
            f"/api/v1/jobs/{args.job}/metrics/?names=loss,accuracy&per_rank=false&max_points=2",
        )
        latest = {s["name"]: s["value"][-1] for s in metrics["series"] if s["value"]}
        row = _job_row(job)
        run = f" (run {metrics['run']})" if metrics.get("run") else ""
        line = (
            f"job {row['id']} {row['status']}{run}: step {row['step']}, batch size {row['batch_size']}, "
            f"lr {row['lr']}, workers {row['workers']}"
            + "".join(f", {k} {v:.4g}" for k, v in sorted(latest.items()))
        )
        if line != last_line:
            print(line, flush=True)
            last_line = line
        if job["status"] in TERMINAL:
            return 0 if job["status"] == "succeeded" else 1
        time.sleep(args.interval)


LOG_PAGE = 1000


def _log_query(args, run: int | None, **extra: Any) -> str:
    query = {"run": run, "worker": args.worker, "stream": args.stream, **extra}
    return urlencode({k: v for k, v in query.items() if v is not None})


def _show_line(line: dict, *, merged: bool, as_json: bool) -> None:
    """A worker's line as it wrote it: stderr lines to stderr (marked ``!`` when merged),
    prefixed with the worker's rank when several workers' lines are merged."""
    if as_json:
        print(json.dumps(line), flush=True)
        return
    err = line["stream"] == "stderr"
    prefix = f"[rank {line['rank']}{'!' if err else ''}] " if merged else ""
    print(prefix + line["text"], file=sys.stderr if err else sys.stdout, flush=True)


def cmd_logs(args) -> int:
    client = _client(args)
    base = f"/api/v1/jobs/{args.job}/logs/"
    merged = args.worker is None
    run = args.run  # pinned to the first answer's run: a follow stays on one run
    since = 0

    def fetch(**extra: Any) -> dict:
        nonlocal run, since
        page = client.call("GET", f"{base}?{_log_query(args, run, **extra)}")
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
        ended = client.call("GET", f"/api/v1/jobs/{args.job}/")["status"] in TERMINAL
        if ended:
            time.sleep(args.interval)  # lines other nodes ship as their workers end
        fetch_new()
        if ended:
            return 0
        time.sleep(args.interval)


def _parse_value(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def cmd_command(args) -> None:
    body = {"action": args.action}
    if args.value is not None:
        body["value"] = _parse_value(args.value)
    commands = _client(args).call("POST", f"/api/v1/jobs/{args.job}/commands/", body)
    print(f"issued {args.action} as command {commands[0]['id']} (seq {commands[0]['seq']})")


def cmd_tokens_list(args) -> None:
    tokens = _client(args).call("GET", "/api/v1/tokens/")
    print(_table(tokens, ["id", "name", "prefix", "created_at", "expires_at", "revoked_at"]))


def cmd_tokens_create(args) -> None:
    body = {"name": args.name}
    if args.expires_in_days:
        body["expires_in_days"] = args.expires_in_days
    token = _client(args).call("POST", "/api/v1/tokens/", body)
    print(token["token"])
    print(f"(token {token['id']} '{token['name']}': shown only now)", file=sys.stderr)


def cmd_tokens_revoke(args) -> None:
    token = _client(args).call("DELETE", f"/api/v1/tokens/{args.id}/")
    print(f"token {token['id']} revoked")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptrain", description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="control plane URL (or ADAPTRAIN_SERVER)")
    parser.add_argument("--token", help="API token (or ADAPTRAIN_TOKEN)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("login", help="check and save the server URL and token")
    p.add_argument("--server", required=True)
    p.add_argument("--token", required=True)
    p.set_defaults(func=cmd_login)

    jobs = sub.add_parser(
        "jobs", help="create, list, show, watch, cancel and restart jobs"
    ).add_subparsers(dest="jobs_command", required=True)
    p = jobs.add_parser("list")
    p.add_argument("--status", help="comma-separated statuses")
    p.set_defaults(func=cmd_jobs_list)
    p = jobs.add_parser("show")
    p.add_argument("job", type=int)
    p.set_defaults(func=cmd_jobs_show)
    p = jobs.add_parser("create")
    p.add_argument("--file", help="a JSON job definition, as POST /api/v1/jobs/ takes")
    p.add_argument("--name")
    p.add_argument("--entrypoint", default="examples.digits")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--policy", help=POLICY_HELP)
    p.set_defaults(func=cmd_jobs_create)
    p = jobs.add_parser("cancel")
    p.add_argument("job", type=int)
    p.set_defaults(func=cmd_jobs_cancel)
    p = jobs.add_parser("runs", help="a job's runs (attempts), newest first")
    p.add_argument("job", type=int)
    p.set_defaults(func=cmd_jobs_runs)
    p = jobs.add_parser(
        "restart", help="start a new run of a finished job (default: from its latest checkpoint)"
    )
    p.add_argument("job", type=int)
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--resume-from", help="checkpoint folder to resume from (on the job's nodes)"
    )
    where.add_argument("--from-scratch", action="store_true", help="ignore any checkpoint")
    p.add_argument("--reason", help="why, for the run's record and the audit trail")
    p.set_defaults(func=cmd_jobs_restart)
    p = jobs.add_parser("watch", help="follow a job until it ends (exit 0 if it succeeded)")
    p.add_argument("job", type=int)
    p.add_argument("--interval", type=float, default=2.0)
    p.set_defaults(func=cmd_jobs_watch)

    p = sub.add_parser(
        "run",
        help="pack a project directory, upload it and start a job that runs it",
        description=(
            "Pack PROJECT (following .gitignore and .adaptrainignore), upload it unless the "
            "control plane has the same content already, and create a job whose workers run "
            "ENTRYPOINT from it. Exit status: 0 when the job was created (with --watch: when "
            "it succeeded), 1 otherwise."
        ),
    )
    p.add_argument("project", help="the project directory")
    p.add_argument(
        "--entrypoint",
        required=True,
        help="module to run (train, like python -m) or module:function (train:main)",
    )
    p.add_argument("--name", help="job name (default: the directory's name)")
    p.add_argument("--workers", type=int, default=1, help="initial workers (default 1)")
    p.add_argument("--min-workers", type=int, help="elastic: fewest workers")
    p.add_argument("--max-workers", type=int, help="elastic: most workers")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument(
        "--hyperparameters", help='more hyper-parameters as JSON, e.g. \'{"lr_scaling": "sqrt"}\''
    )
    p.add_argument("--policy", help=POLICY_HELP)
    p.add_argument("--strategy", help="ssgd, sma or pair")
    p.add_argument("--topology", help="ring, tree, star or auto")
    p.add_argument(
        "--max-size-mb", type=float, default=100.0, help="refuse a project larger (default 100)"
    )
    p.add_argument("--watch", action="store_true", help="follow the job until it ends")
    p.add_argument("--interval", type=float, default=2.0, help="--watch polling interval")
    p.add_argument("--json", action="store_true", help="print the created job as JSON")
    p.set_defaults(func=cmd_run)

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

    p = sub.add_parser("command", help="issue a command to a running job")
    p.add_argument("job", type=int)
    p.add_argument("action", help="set_batch_size, set_lr, stop, ...")
    p.add_argument("value", nargs="?", help='the value (JSON: 64, 0.01, "ring")')
    p.set_defaults(func=cmd_command)

    tokens = sub.add_parser("tokens", help="manage your API tokens").add_subparsers(
        dest="tokens_command", required=True
    )
    p = tokens.add_parser("list")
    p.set_defaults(func=cmd_tokens_list)
    p = tokens.add_parser("create")
    p.add_argument("name")
    p.add_argument("--expires-in-days", type=int)
    p.set_defaults(func=cmd_tokens_create)
    p = tokens.add_parser("revoke")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_tokens_revoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (CliError, ApiError, Unreachable) as exc:
        print(f"adaptrain: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
