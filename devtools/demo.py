"""The demo: the whole system on this machine and an adaptive training run to watch.

Run through ``scripts/demo`` (which sets up the virtual environment first). Starts or
finds PostgreSQL and Redis, migrates, creates a login, starts web + Celery worker and
beat + one agent, then submits a 2-worker job on scikit-learn's digits whose policy
doubles the batch size as training goes. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from devtools.backing_services import ensure_backing_services
from devtools.devstack import (
    DEMO_POLICY,
    ROOT,
    ApiClient,
    Stack,
    StackError,
    demo_job,
    embedded_requested,
    ensure_user,
)


def say(message: str) -> None:
    try:
        print(f"[demo] {message}", flush=True)
    except OSError:
        pass  # the terminal or pipe is gone (e.g. Ctrl-C hit a pipeline): keep shutting down


def demo_password(data_dir: Path) -> str:
    path = data_dir / "demo-password"
    if os.environ.get("DEMO_PASSWORD"):
        return os.environ["DEMO_PASSWORD"]
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(9)
    path.write_text(password)
    path.chmod(0o600)
    return password


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
    parser.add_argument(
        "--steps",
        type=int,
        default=150_000,
        help="training steps of the demo job (default 150000: a few minutes)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-job", action="store_true", help="start the system but submit no job")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / ".data",
        help="where the demo keeps its password, logs, agent state and embedded servers",
    )
    args = parser.parse_args()

    data_dir = args.data_dir
    services = ensure_backing_services(
        prefer_embedded=embedded_requested(), data_dir=data_dir, database_name="adaptrain", log=say
    )
    stack = Stack(
        # DEBUG off: a user's stack answers with the product's pages and JSON errors,
        # never Django's debug pages (which show settings and code).
        env={**services.env(), "DEBUG": os.environ.get("DEBUG", "false")},
        log_dir=data_dir / "logs",
        port=args.port,
        progress=say,
        agent_slots=max(args.workers, 2),
    )

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    # SIGINT too: a shell starts a background job with SIGINT ignored, and Python keeps
    # that, so `kill -INT` of a demo started with & would do nothing.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    try:
        stack.migrate()
        password = demo_password(data_dir)
        token = ensure_user(stack, "demo", password)
        join_token = stack.manage("create_join_token", "--label", "demo").strip()
        stack.start_web()
        stack.start_celery()
        stack.start_agents(join_token, data_dir / "agents")
        api = ApiClient(stack.url, token)
        job_url = stack.url
        if not args.no_job:
            status, policy = api.post("/api/v1/policies/", {"definition": DEMO_POLICY})
            if status != 201:
                raise StackError(f"creating the demo policy failed: {policy}")
            status, job = api.post(
                "/api/v1/jobs/", demo_job(policy["id"], steps=args.steps, workers=args.workers)
            )
            if status != 201:
                raise StackError(f"creating the demo job failed: {job}")
            job_url = f"{stack.url}/jobs/{job['id']}/"
            say(
                f"submitted job #{job['id']}: {args.workers} workers on digits; the policy doubles "
                "the batch size every 10000 steps up to 512"
            )
        print(flush=True)
        print("=" * 72)
        print(f"  Watch it:  {job_url}")
        print(f"  Log in as: demo / {password}")
        print(f"  API token: {token}   (Authorization: Token …)")
        print(f"  Logs:      {stack.log_dir}")
        print("  Ctrl-C stops everything this command started.")
        print("=" * 72, flush=True)
        last = None
        while True:
            stack.check_alive()
            if not args.no_job:
                status, body = api.get(f"/api/v1/jobs/{job['id']}/")
                if status == 200:
                    line = (
                        f"job #{body['id']} {body['status']}: step {body['last_step']}, "
                        f"batch size {body['parameters']['batch_size']}"
                    )
                    if line != last:
                        say(line)
                        last = line
            time.sleep(3)
    except KeyboardInterrupt:
        say("stopping …")
        return 0
    except StackError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        signal.signal(
            signal.SIGINT, signal.SIG_IGN
        )  # a second Ctrl-C must not cut the clean-up short
        try:
            stack.stop()
        finally:
            services.stop()
            say("stopped every process the demo started")


if __name__ == "__main__":
    sys.exit(main())
