"""Start the control plane as in production (web, Celery worker and beat, PostgreSQL,
Redis) for the control-plane benchmarks, on a database of their own."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

from agent.local import free_port
from devtools.backing_services import ensure_backing_services
from devtools.devstack import ROOT, ApiClient, Stack, ensure_user, recreate_database


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def running_stack(*, agents: int = 0, slots: int = 4, name: str = "bench"):
    services = ensure_backing_services(
        data_dir=ROOT / ".data", database_name="adaptrain", redis_db=6, log=log
    )
    log_dir = Path(tempfile.mkdtemp(prefix=f"adaptrain-{name}-"))
    env = {
        "DATABASE_URL": recreate_database(services.database_url, f"adaptrain_{name}"),
        "REDIS_URL": services.redis_url,
        "CELERY_QUEUE": f"adaptrain-{name}",
        "CHANNELS_PREFIX": f"adaptrain-{name}",
        "POLICY_EVAL_INTERVAL_S": "1",
        "LOG_LEVEL": "WARNING",
    }
    stack = Stack(
        env=env, log_dir=log_dir, port=free_port(), agents=agents, agent_slots=slots, progress=log
    )
    try:
        stack.migrate()
        stack.password = "bench-password"
        stack.token = ensure_user(stack, "bench", stack.password)
        # One use per agent, and one for the simulated agent of agent_with_job.
        stack.join_token = stack.manage(
            "create_join_token", "--label", name, "--uses", str(agents + 1)
        ).strip()
        stack.start_web()
        stack.start_celery()
        if agents:
            stack.start_agents(stack.join_token, log_dir / "agents")
        stack.api = ApiClient(stack.url, stack.token)
        yield stack
    finally:
        stack.stop()
        services.stop()
        log(f"logs in {log_dir}")


def session_cookie(stack) -> str:
    """Log in through the login form as a browser would; return the Cookie header."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{stack.url}/login/").read()
    csrf = next(c.value for c in jar if c.name == "csrftoken")
    body = urllib.parse.urlencode(
        {"username": "bench", "password": stack.password, "csrfmiddlewaretoken": csrf, "next": "/"}
    ).encode()
    request = urllib.request.Request(
        f"{stack.url}/login/", data=body, headers={"Referer": f"{stack.url}/login/"}
    )
    opener.open(request).read()
    return "; ".join(f"{c.name}={c.value}" for c in jar)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


async def agent_with_job(stack, *, name: str, timeout_credential_s: float = 60.0):
    """Enrol a simulated agent and place a 1-worker job on it; return (client, job id).
    The client posts metric batches exactly as a real agent does."""
    import asyncio

    from agent.daemon.client import ControlPlaneClient

    enrol = await ControlPlaneClient(stack.url).enrol(
        join_token=stack.join_token, name="bench-node", address="127.0.0.1", slots=4
    )
    client = ControlPlaneClient(stack.url, enrol.credential, timeout_s=timeout_credential_s)
    status, job = stack.api.post(
        "/api/v1/jobs/",
        {
            "name": name,
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 32, "lr": 0.1},
            "workers": {"initial": 1},
        },
    )
    if status != 201:
        raise SystemExit(f"creating the benchmark job failed: {job}")
    for _ in range(100):  # Celery places it on the enrolled node
        if stack.api.get(f"/api/v1/jobs/{job['id']}/")[1]["workers"]:
            break
        await asyncio.sleep(0.1)
    return client, job["id"]
