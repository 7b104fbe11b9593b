"""The demo stops cleanly however it is stopped: SIGINT works even when a shell started it
in the background (where SIGINT starts ignored), the agents stop first so their final
reports reach a web server that still answers, and no job is left `running`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import psycopg2
import pytest

from agent.local import free_port
from devtools.devstack import ROOT, recreate_database

pytestmark = pytest.mark.e2e


def _job_rows(database_url: str) -> list[tuple[str, str]]:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, status_reason FROM jobs_job")
        return list(cur.fetchall())


def test_sigint_to_a_background_demo_stops_it_and_leaves_no_job_running(tmp_path):
    from django.conf import settings

    base = urlsplit(settings.DATABASE_URL).path.lstrip("/") or "adaptrain"
    database_url = recreate_database(settings.DATABASE_URL, f"{base}_demo")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_QUEUE": f"adaptrain-demo-{os.getpid()}",
        "CHANNELS_PREFIX": f"adaptrain-demo-{os.getpid()}",
        "DEMO_PASSWORD": "demo-password",
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    log = open(tmp_path / "demo.log", "w+")
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools.demo",
            "--port",
            str(port),
            "--workers",
            "1",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        # What `demo &` in a non-interactive shell does: SIGINT ignored in the child.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            log.seek(0)
            text = log.read()
            if "running: step" in text:
                break
            assert demo.poll() is None, f"the demo exited early:\n{text[-3000:]}"
            time.sleep(1)
        else:
            pytest.fail(f"the job never ran:\n{text[-3000:]}")
        assert [status for status, _ in _job_rows(database_url)] == ["running"]

        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
        log.seek(0)
        assert "stopping" in log.read()
        # The agent stopped its workers and reported it before the web server went.
        [(status, reason)] = _job_rows(database_url)
        assert status != "running", reason
        assert status == "failed" and "shut down" in reason
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
            demo.wait(timeout=60)
