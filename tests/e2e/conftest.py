"""The whole stack for end-to-end tests: web, Celery worker and beat, one agent.

Runs on a database of its own (``<configured name>_e2e``, dropped and re-created per session) and the Redis
database and Celery queue that devtools/run_tests.py chose, through the same launcher
as the demo (devtools/devstack.py).
"""

from __future__ import annotations

import os
import shutil
import time
from urllib.parse import urlsplit

import pytest

from agent.local import free_port
from devtools.devstack import (
    ApiClient,
    NetworkNamespaces,
    Stack,
    StackError,
    ensure_user,
    recreate_database,
)


# Package-scoped (not session): the stacks end with tests/e2e, before tests/faults starts
# stacks of its own, so two cores never carry three whole stacks at once.
@pytest.fixture(scope="package")
def stack(tmp_path_factory):
    yield from _stack(tmp_path_factory, suffix="e2e", agents=1, slots=4)


@pytest.fixture(scope="module")
def multinode_stack(tmp_path_factory):
    """Three agents with one slot each, each in a network namespace of its own (a host on a
    virtual network: veth pairs on a private bridge, the control plane on the bridge's
    address). Where namespaces cannot be made (not root, no iproute2) their workers
    listen on 127.0.0.2, .3 and .4 instead; ``stack.namespaces`` says which it got.
    ADAPTRAIN_TEST_NETNS=0 asks for the loopback addresses."""
    use_namespaces = (
        os.environ.get("ADAPTRAIN_TEST_NETNS", "1") != "0" and NetworkNamespaces.available()
    )
    if not use_namespaces:
        print("[stack] network namespaces unavailable: agents on 127.0.0.2-4 instead", flush=True)
    yield from _stack(
        tmp_path_factory,
        suffix="multinode",
        agents=3,
        slots=1,
        distinct_addresses=True,
        namespaces=use_namespaces,
    )


@pytest.fixture(scope="package")
def own_code_stack(tmp_path_factory):
    """One agent with two slots that runs users' own code (AGENT_CODE's default), bundles
    stored in a directory of the test's (``stack.bundle_dir``), heartbeats every second;
    ``stack.state_dir`` is the agent's state directory. For tests/e2e/test_own_code.py and
    the tutorial's test."""
    bundle_dir = tmp_path_factory.mktemp("bundles")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUNDLE_DIR", str(bundle_dir))
        mp.setenv("AGENT_HEARTBEAT_S", "1")
        mp.delenv("AGENT_CODE", raising=False)
        for stack in _stack(tmp_path_factory, suffix="own_code", agents=1, slots=2):
            stack.bundle_dir = bundle_dir
            stack.state_dir = stack.log_dir / "agents" / "node-1"
            yield stack


def _stack(
    tmp_path_factory,
    *,
    suffix: str,
    agents: int,
    slots: int | list[int],
    distinct_addresses: bool = False,
    namespaces: bool = False,
    spare_namespaces: int = 0,
    redis_url: str | None = None,
    database_url: str | None = None,
):
    """The stack, on ``redis_url`` when given (a Redis of the test's own), else on the
    configured one; its database on the server of ``database_url`` when given (a
    PostgreSQL of the test's own), else on the configured one. With ``namespaces``, ``spare_namespaces`` more are made, after the
    agents' own, for agents a test starts itself."""
    from django.conf import settings

    # A database of its own, named after the configured one so parallel runs with
    # different DATABASE_URLs do not collide.
    base_name = urlsplit(settings.DATABASE_URL).path.lstrip("/") or "adaptrain"
    database_url = recreate_database(database_url or settings.DATABASE_URL, f"{base_name}_{suffix}")
    log_dir = tmp_path_factory.mktemp(f"{suffix}-logs")
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url or settings.REDIS_URL,
        "CELERY_QUEUE": os.environ.get("CELERY_QUEUE", "adaptrain-e2e") + f"-{suffix}",
        "CHANNELS_PREFIX": os.environ.get("CHANNELS_PREFIX", "adaptrain-e2e") + f"-{suffix}",
        "POLICY_EVAL_INTERVAL_S": "1",
        "COLLECTIVE_TIMEOUT": "60",
    }
    s = Stack(
        env=env,
        log_dir=log_dir,
        port=free_port(),
        agents=agents,
        agent_slots=slots,
        progress=lambda m: print(f"[stack] {m}", flush=True),
    )
    try:
        if namespaces:
            s.namespaces = NetworkNamespaces(
                agents + spare_namespaces, tag=f"{os.getpid() % 10000:04d}"
            )
            s.namespaces.create()
        s.migrate()
        s.token = ensure_user(s, "e2e", "e2e-password")
        s.password = "e2e-password"
        join_token = s.manage(
            "create_join_token", "--label", "e2e", "--uses", str(max(agents, 1))
        ).strip()
        s.start_web()
        s.start_celery()
        s.start_agents(join_token, log_dir / "agents", distinct_addresses=distinct_addresses)
        s.api = ApiClient(s.url, s.token)
        wait_for(
            lambda: sum(n["status"] == "online" for n in s.api.get("/api/v1/nodes/")[1]) == agents,
            timeout_s=60,
            what=f"{agents} agent(s) to come online",
            stack=s,
        )
        yield s
    finally:
        s.stop()
        if s.namespaces is not None:
            s.namespaces.delete()
        print(f"[stack] logs kept in {log_dir}")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(
    predicate, *, timeout_s: float, what: str, stack: Stack | None = None, interval_s: float = 0.5
):
    deadline = time.monotonic() + timeout_s
    last_error = None
    while time.monotonic() < deadline:
        if stack is not None:
            try:
                stack.check_alive()
            except StackError as exc:
                pytest.fail(str(exc))
        try:
            value = predicate()
            if value:
                return value
        except (KeyError, IndexError, TypeError) as exc:
            last_error = exc
        time.sleep(interval_s)
    pytest.fail(
        f"timed out after {timeout_s:.0f} s waiting for {what}"
        + (f" ({last_error!r})" if last_error else "")
    )


def wait_for_job(api, job_id: int, predicate, *, timeout_s: float, what: str, stack: Stack):
    """Wait until predicate(job detail) holds; fail at once if the job fails instead."""

    def check():
        status, job = api.get(f"/api/v1/jobs/{job_id}/")
        assert status == 200, job
        if job["status"] == "failed":
            pytest.fail(f"job {job_id} failed while waiting for {what}: {job['status_reason']}")
        return predicate(job)

    return wait_for(check, timeout_s=timeout_s, what=what, stack=stack)


# --- the browser (headless Chromium through Playwright) ----------------------------------

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail(
            "chromium is not installed; scripts/test installs it (apt-get install chromium)"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


def log_in(page, stack, path: str = "/") -> None:
    """Log in as the e2e user through the login form, landing on ``path``."""
    page.goto(f"{stack.url}/login/?next={path}")
    page.fill("#id_username", "e2e")
    page.fill("#id_password", stack.password)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{path}")
