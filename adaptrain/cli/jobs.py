"""``adaptrain jobs …`` and ``adaptrain run``: jobs from creation to deletion."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from adaptrain.bundle import BundleError, pack
from adaptrain.cli.common import (
    EXIT_JOB_UNSUCCESSFUL,
    EXIT_OK,
    TERMINAL,
    CliError,
    add_json_flag,
    client,
    read_json_file,
    say,
    show,
)
from adaptrain.rest import RestClient

POLICY_HELP = (
    "the policy to attach: its id or name, or a built-in template's id (e.g. "
    "gns-adaptive-batch: a policy is made from it the first time)"
)

JOB_COLUMNS = ["id", "name", "owner", "status", "step", "progress", "batch_size", "lr", "workers"]


def _progress(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    total = progress.get("total") or job.get("hyperparameters", {}).get("steps")
    if not total:
        return ""
    eta = progress.get("eta_s")
    done = f"{100 * job['last_step'] / total:.0f}%"
    return done + (f" (ETA {_duration(eta)})" if eta else "")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds}s"
    if seconds < 5400:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def policy_id(rest: RestClient, spec: str | None) -> int | None:
    """The policy ``--policy`` names: an id; the name of a policy you can see; or a built-in
    template's id (``gns-adaptive-batch``), from which a policy of the template's name is
    made the first time and used again after that."""
    if spec is None or spec == "":
        return None
    if spec.isdigit():
        return int(spec)
    policies = rest.call("GET", "/api/v1/policies/")
    named = [p for p in policies if p["name"] == spec]
    if len(named) > 1:
        ids = ", ".join(str(p["id"]) for p in named)
        raise CliError(f"several policies are named {spec!r} (ids {ids}): give the id")
    if named:
        return int(named[0]["id"])
    templates = rest.call("GET", "/api/v1/policies/templates/")
    template = next((t for t in templates if t["id"] == spec), None)
    if template is None:
        known = ", ".join(t["id"] for t in templates)
        raise CliError(
            f"no policy is named {spec!r}, and it is no template's id ({known}); give a "
            "policy's id or name (adaptrain policies list)"
        )
    made = [p for p in policies if p["name"] == template["name"]]
    if made:
        return int(made[0]["id"])
    policy = rest.call("POST", "/api/v1/policies/", {"definition": template["definition"]})
    say(f"created policy {policy['id']} ({policy['name']!r}) from template {spec}")
    return int(policy["id"])


def unreachable_text(job: dict[str, Any]) -> list[str]:
    """The text "node X unreachable since …" for each node of the job's workers that stopped
    answering, as the job page says it: the job keeps its status meanwhile."""
    return [
        f"node {u['node']} unreachable since {u.get('since') or '?'}"
        for u in job.get("unreachable_nodes") or []
    ]


def job_row(job: dict[str, Any]) -> dict[str, Any]:
    p = job["parameters"]
    return {
        "id": job["id"],
        "name": job["name"],
        "owner": job.get("owner"),
        "status": job["status"],
        "step": job["last_step"],
        "progress": _progress(job),
        "batch_size": p["batch_size"],
        "lr": p["lr"],
        "workers": p["workers"],
    }


def cmd_jobs_list(args: argparse.Namespace) -> None:
    query = {
        "status": args.status,
        "q": args.search,
        "owner": args.owner,
        "node": args.node,
        "ordering": args.sort,
        "archived": args.archived,
        "limit": args.limit,
        "offset": args.offset,
    }
    path = "/api/v1/jobs/?" + urlencode({k: v for k, v in query.items() if v is not None})
    page = client(args).call("GET", path)
    show(args, page, [job_row(j) for j in page["results"]], JOB_COLUMNS)
    if not args.json and page.get("next"):
        say(f"({page['count']} jobs in all; --offset {args.offset + args.limit} for the next page)")


def cmd_jobs_show(args: argparse.Namespace) -> None:
    job = client(args).call("GET", f"/api/v1/jobs/{args.job}/")
    if args.json:
        show(args, job)
        return
    row = job_row(job)
    lines = [
        f"job {job['id']} {job['name']!r} ({job['owner']}): {job['status']}"
        + (f" — {job['status_reason']}" if job.get("status_reason") else ""),
        *(
            f"  {text} (its workers may still be training; the job keeps its status)"
            for text in unreachable_text(job)
        ),
        f"  entrypoint {job['entrypoint']}"
        + (f", bundle {job['bundle'][:12]}" if job.get("bundle") else ""),
        f"  step {row['step']}" + (f" ({row['progress']})" if row["progress"] else ""),
        "  " + ", ".join(f"{k} {v}" for k, v in job["parameters"].items() if v is not None),
        f"  policy {job.get('policy') or '-'}",
    ]
    if job.get("labels"):
        lines.append("  labels " + ", ".join(f"{k}={v}" for k, v in job["labels"].items()))
    if job.get("archived_at"):
        lines.append(f"  archived {job['archived_at']}")
    for w in job.get("workers") or []:
        lines.append(f"  worker {w['rank']} on {w['node']}: {w['state']}")
    print("\n".join(lines))


def job_body(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        body = read_json_file(args.file)
        if not isinstance(body, dict):
            raise CliError(
                f"{args.file} must hold a JSON object (a job, as POST /api/v1/jobs/ takes)"
            )
        return body
    if args.name is None or args.batch_size is None or args.lr is None:
        raise CliError("give --file, or at least --name, --batch-size and --lr")
    hyper: dict[str, Any] = json.loads(args.hyperparameters) if args.hyperparameters else {}
    hyper.update({"batch_size": args.batch_size, "lr": args.lr})
    if args.steps is not None:
        hyper["steps"] = args.steps
    workers: dict[str, int] = {"initial": args.workers}
    if args.min_workers is not None:
        workers["min"] = args.min_workers
    if args.max_workers is not None:
        workers["max"] = args.max_workers
    body: dict[str, Any] = {
        "name": args.name,
        "entrypoint": args.entrypoint,
        "hyperparameters": hyper,
        "workers": workers,
        "policy": policy_id(client(args), args.policy),
    }
    for key in ("strategy", "topology"):
        if getattr(args, key, None):
            body[key] = getattr(args, key)
    if args.label:
        body["labels"] = parse_labels(args.label)
    return body


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """``--label team=vision --label sweep=lr`` as a labels object."""
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--label {pair!r}: write it as NAME=VALUE, e.g. team=vision")
        labels[key.strip()] = value
    return labels


def _create(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    rest = client(args)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    job: dict[str, Any] = rest.call("POST", "/api/v1/jobs/", body, headers=headers)
    if args.json:
        show(args, job)
    else:
        print(f"created job {job['id']} ({job['status']}): {rest.server}/jobs/{job['id']}/")
    return job


def cmd_jobs_create(args: argparse.Namespace) -> int:
    job = _create(args, job_body(args))
    if args.watch:
        args.job = job["id"]
        return cmd_jobs_watch(args)
    return EXIT_OK


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cmd_run(args: argparse.Namespace) -> int:
    """Pack a project, upload it unless the control plane has that content, start a job."""
    try:
        bundle = pack(args.project, limit_bytes=int(args.max_size_mb * 1024 * 1024))
    except BundleError as exc:
        raise CliError(str(exc)) from None
    say(
        f"packed {len(bundle.files)} file(s) from {args.project} "
        f"({_human_bytes(bundle.unpacked_bytes)}, archive {_human_bytes(bundle.size)}, "
        f"sha256 {bundle.digest[:12]})"
    )
    rest = client(args)
    policy = policy_id(rest, args.policy)  # a wrong name is said before any upload
    args.policy = None if policy is None else str(policy)
    status, _ = rest.request("GET", f"/api/v1/bundles/{bundle.digest}/")
    if status == 200:
        say("the control plane has this code already: nothing to upload")
    else:
        rest.call(
            "POST",
            f"/api/v1/bundles/?digest={bundle.digest}",
            data=bundle.data,
            content_type="application/gzip",
        )
        say(f"uploaded {_human_bytes(bundle.size)}")
    args.name = args.name or Path(args.project).resolve().name
    if args.batch_size is None or args.lr is None:
        hyper = json.loads(args.hyperparameters) if args.hyperparameters else {}
        if "batch_size" not in hyper or "lr" not in hyper:
            raise CliError("give --batch-size and --lr (or both in --hyperparameters)")
        args.batch_size = args.batch_size or hyper["batch_size"]
        args.lr = args.lr or hyper["lr"]
    args.file = None
    body = job_body(args)
    body["bundle"] = bundle.digest
    return cmd_jobs_create_body(args, body)


def cmd_jobs_create_body(args: argparse.Namespace, body: dict[str, Any]) -> int:
    job = _create(args, body)
    if args.watch:
        args.job = job["id"]
        return cmd_jobs_watch(args)
    return EXIT_OK


def _command(args: argparse.Namespace, action: str) -> None:
    commands = client(args).call("POST", f"/api/v1/jobs/{args.job}/commands/", {"action": action})
    print(
        f"job {args.job}: {action} issued as command {commands[0]['id']} (seq {commands[0]['seq']})"
    )


def cmd_jobs_stop(args: argparse.Namespace) -> None:
    _command(args, "stop")


def cmd_jobs_pause(args: argparse.Namespace) -> None:
    _command(args, "pause")


def cmd_jobs_resume(args: argparse.Namespace) -> None:
    _command(args, "resume")


def cmd_jobs_cancel(args: argparse.Namespace) -> None:
    job = client(args).call("POST", f"/api/v1/jobs/{args.job}/cancel/", {})
    print(f"job {job['id']} is {job['status']}")


def cmd_jobs_delete(args: argparse.Namespace) -> None:
    if not args.yes:
        raise CliError(
            f"deleting job {args.job} removes it with its runs, metrics and logs for good; "
            "add --yes to do it (or archive it: adaptrain jobs archive)"
        )
    done = client(args).call("DELETE", f"/api/v1/jobs/{args.job}/")
    if args.json:
        show(args, done)
        return
    removed = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in done["removed"].items())
    print(f"job {done['deleted']} deleted ({removed})")


def cmd_jobs_archive(args: argparse.Namespace) -> None:
    method = "DELETE" if args.undo else "POST"
    job = client(args).call(method, f"/api/v1/jobs/{args.job}/archive/")
    if args.json:
        show(args, job)
        return
    print(f"job {job['id']} " + ("archived" if job["archived_at"] else "is back in the list"))


def cmd_jobs_label(args: argparse.Namespace) -> None:
    rest = client(args)
    labels = {} if args.replace else dict(rest.call("GET", f"/api/v1/jobs/{args.job}/")["labels"])
    labels.update(parse_labels(args.set or []))
    for key in args.remove or []:
        labels.pop(key, None)
    job = rest.call("PATCH", f"/api/v1/jobs/{args.job}/", {"labels": labels})
    if args.json:
        show(args, job)
        return
    text = ", ".join(f"{k}={v}" for k, v in job["labels"].items()) or "none"
    print(f"job {job['id']} labels: {text}")


def cmd_jobs_runs(args: argparse.Namespace) -> None:
    runs = client(args).call("GET", f"/api/v1/jobs/{args.job}/runs/?limit=200")
    rows = [{**r, "reason": r["status_reason"]} for r in runs["results"]]
    show(
        args,
        runs,
        rows,
        ["number", "status", "started_at", "finished_at", "resumed_from", "reason"],
    )


def cmd_jobs_events(args: argparse.Namespace) -> None:
    events = client(args).call("GET", f"/api/v1/jobs/{args.job}/events/")
    show(args, events, events, ["id", "time", "kind", "step", "actor", "message"])


def _pair(before: dict[str, Any] | None, after: dict[str, Any] | None, key: str, fmt: str) -> str:
    def one(side: dict[str, Any] | None) -> str:
        value = (side or {}).get(key)
        return "?" if value is None else format(value, fmt)

    return "" if before is None else f"{one(before)} → {one(after)}"


def adaptation_row(a: dict[str, Any]) -> dict[str, Any]:
    """One change as a table row: "?" where a window had no data (the note says why)."""
    saved = a.get("time_saved_s")
    by = (
        f"{a['decision']['policy']}/{a['decision']['rule']}"
        if a.get("decision")
        else a["issued_by"]
    )
    before, after = a.get("before"), a.get("after")
    from_ = "?" if a.get("value_from") is None else a["value_from"]
    return {
        "run": a["run"],
        "step": a["step"],
        "change": f"{a['action']} {from_} → {a['value_to']}",
        "by": by,
        "state": a["state"],
        "throughput": _pair(before, after, "throughput", ".4g"),
        "efficiency": _pair(before, after, "efficiency", ".2f"),
        "goodput": _pair(before, after, "goodput", ".4g"),
        "saved_s": "" if saved is None else f"{saved:+.1f}",
        "note": a.get("note") or "",
    }


ADAPTATION_COLUMNS = [
    "run",
    "step",
    "change",
    "by",
    "state",
    "throughput",
    "efficiency",
    "goodput",
    "saved_s",
    "note",
]


def cmd_jobs_adaptations(args: argparse.Namespace) -> None:
    query = {"run": args.run, "window": args.window}
    path = f"/api/v1/jobs/{args.job}/adaptations/"
    if any(v is not None for v in query.values()):
        path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
    body = client(args).call("GET", path)
    rows = [adaptation_row(a) for a in body["adaptations"]]
    show(args, body, rows, ADAPTATION_COLUMNS)
    if not args.json:
        total = body.get("time_saved_s")
        say(
            f"M0 (base batch) {body['base_batch']:g}; "
            + (
                "no estimate of time saved yet"
                if total is None
                else f"time saved in all {total:+.1f} s"
            )
        )


def cmd_jobs_restart(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    if args.from_scratch:
        body["resume_from"] = None
    elif args.resume_from:
        body["resume_from"] = args.resume_from
    if args.reason:
        body["reason"] = args.reason
    run = client(args).call("POST", f"/api/v1/jobs/{args.job}/restart/", body)
    if args.json:
        show(args, run)
    else:
        print(f"job {args.job}: run {run['number']} {run['status']}; {run['resume_note']}")


def cmd_jobs_watch(args: argparse.Namespace) -> int:
    rest = client(args)
    last_line, seen_events = None, 0
    while True:
        job = rest.call("GET", f"/api/v1/jobs/{args.job}/")
        events = rest.call("GET", f"/api/v1/jobs/{args.job}/events/?after={seen_events}")
        for e in events:
            seen_events = max(seen_events, e["id"])
            print(f"  event: {e['actor']}: {e['message']}", flush=True)
        # The current run's (the metrics endpoint's default): a restart counts steps again.
        metrics = rest.call(
            "GET",
            f"/api/v1/jobs/{args.job}/metrics/?names=loss,accuracy&per_rank=false&max_points=2",
        )
        latest = {s["name"]: s["value"][-1] for s in metrics["series"] if s["value"]}
        row = job_row(job)
        run = f" (run {metrics['run']})" if metrics.get("run") else ""
        line = (
            f"job {row['id']} {row['status']}{run}: step {row['step']}, batch size {row['batch_size']}, "
            f"lr {row['lr']}, workers {row['workers']}"
            + "".join(f", {k} {v:.4g}" for k, v in sorted(latest.items()))
            + "".join(f"; {text}" for text in unreachable_text(job))
        )
        if line != last_line:
            print(line, flush=True)
            last_line = line
        if job["status"] in TERMINAL:
            return EXIT_OK if job["status"] == "succeeded" else EXIT_JOB_UNSUCCESSFUL
        time.sleep(args.interval)


def _job_spec_arguments(p: argparse.ArgumentParser, *, file: bool) -> None:
    if file:
        p.add_argument(
            "--file", help="a JSON job definition, as POST /api/v1/jobs/ takes (- for stdin)"
        )
    p.add_argument("--name")
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
    p.add_argument("--strategy", choices=["ssgd", "sma", "pair"])
    p.add_argument(
        "--topology", choices=["ring", "tree", "star", "hierarchical", "auto", "routed_ring"]
    )
    p.add_argument(
        "--idempotency-key",
        help="retrying with the same key and job returns the job made the first time",
    )
    p.add_argument(
        "--label",
        action="append",
        metavar="NAME=VALUE",
        help="a label of your own (repeat for more), e.g. team=vision",
    )
    p.add_argument("--watch", action="store_true", help="follow the job until it ends")
    p.add_argument("--interval", type=float, default=2.0, help="--watch polling interval")
    add_json_flag(p)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    jobs = sub.add_parser(
        "jobs", help="list, show, create, watch, stop and restart jobs"
    ).add_subparsers(dest="jobs_command", required=True, metavar="SUBCOMMAND")
    p = jobs.add_parser("list", help="your jobs (staff: everyone's), newest first")
    p.add_argument("--status", help="comma-separated statuses, e.g. running,pending")
    p.add_argument(
        "--search", "-q", help="name or a label contains this (any case); NAME=VALUE: a label"
    )
    p.add_argument(
        "--archived",
        choices=["false", "true", "any"],
        help="archived jobs: hidden (false, the default), only them (true), or both (any)",
    )
    p.add_argument("--owner", help="only this user's jobs (staff)")
    p.add_argument("--node", help="only jobs with workers on this node")
    p.add_argument("--sort", help="created, -created, name, status or step (- for descending)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    add_json_flag(p)
    p.set_defaults(func=cmd_jobs_list)

    p = jobs.add_parser("show", help="one job: status, knobs, workers")
    p.add_argument("job", type=int)
    add_json_flag(p)
    p.set_defaults(func=cmd_jobs_show)

    for name, helptext in (
        ("create", "create a job (from flags or --file)"),
        ("run", "create a job and follow it until it ends (create --watch)"),
    ):
        p = jobs.add_parser(name, help=helptext)
        _job_spec_arguments(p, file=True)
        p.add_argument(
            "--entrypoint", default="examples.digits", help="module or module:function to run"
        )
        p.set_defaults(func=cmd_jobs_create, **({"watch": True} if name == "run" else {}))

    for name, func, helptext in (
        ("stop", cmd_jobs_stop, "stop training cleanly at an agreed step (ends succeeded)"),
        ("pause", cmd_jobs_pause, "pause training at an agreed step"),
        ("resume", cmd_jobs_resume, "resume a paused job"),
        ("cancel", cmd_jobs_cancel, "end the job now, as cancelled"),
        ("runs", cmd_jobs_runs, "a job's runs (attempts), newest first"),
        ("events", cmd_jobs_events, "a job's audit trail"),
    ):
        p = jobs.add_parser(name, help=helptext)
        p.add_argument("job", type=int)
        if name in ("runs", "events"):
            add_json_flag(p)
        p.set_defaults(func=func)

    p = jobs.add_parser(
        "adaptations",
        help="what each change of the job's knobs did: throughput, efficiency and goodput "
        "before → after, and the time saved (+) or lost (−) against staying put",
    )
    p.add_argument("job", type=int)
    p.add_argument("--run", type=int, help="only this run's changes (its number)")
    p.add_argument("--window", type=int, help="points per window before and after (default 10)")
    add_json_flag(p)
    p.set_defaults(func=cmd_jobs_adaptations)

    p = jobs.add_parser(
        "delete", help="delete an ended job with its runs, metrics and logs (audited)"
    )
    p.add_argument("job", type=int)
    p.add_argument("--yes", action="store_true", help="yes, delete it for good")
    add_json_flag(p)
    p.set_defaults(func=cmd_jobs_delete)

    p = jobs.add_parser("archive", help="hide an ended job from the default jobs list")
    p.add_argument("job", type=int)
    p.add_argument("--undo", action="store_true", help="bring an archived job back")
    add_json_flag(p)
    p.set_defaults(func=cmd_jobs_archive)

    p = jobs.add_parser("relabel", help="set or remove a job's labels")
    p.add_argument("job", type=int)
    p.add_argument("set", nargs="*", metavar="NAME=VALUE", help="labels to set")
    p.add_argument("--remove", action="append", metavar="NAME", help="a label to remove")
    p.add_argument("--replace", action="store_true", help="drop every other label")
    add_json_flag(p)
    p.set_defaults(func=cmd_jobs_label)

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
    add_json_flag(p)
    p.set_defaults(func=cmd_jobs_restart)

    p = jobs.add_parser(
        "watch", help="follow a job until it ends (exit 0 if it succeeded, 4 if not)"
    )
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
            "it succeeded; 4 when it did not), 1 otherwise."
        ),
    )
    p.add_argument("project", help="the project directory")
    p.add_argument(
        "--entrypoint",
        required=True,
        help="module to run (train, like python -m) or module:function (train:main)",
    )
    _job_spec_arguments(p, file=False)
    p.add_argument(
        "--max-size-mb", type=float, default=100.0, help="refuse a project larger (default 100)"
    )
    p.set_defaults(func=cmd_run, file=None)
