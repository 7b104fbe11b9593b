"""Job logs over the whole stack — PostgreSQL, Redis, web, Celery, a real agent, worker
processes, the job page in headless Chromium, the ``adaptrain`` command.

Workers are tests/support/log_worker.py (it prints what its script says; the agent
starts it through the real launcher in place of the example: ``AGENT_PYTHON`` is a
wrapper that names it as the entrypoint, and the job's ``seed`` hyper-parameter picks
its script). What is checked:

* lines two workers print reach the job page (merged, each after its rank, stderr
  marked; a reader scrolled up keeps their place), the REST API and ``adaptrain logs``
  (``-f`` exits when the job ends);
* a worker whose user code has a syntax error — the import fails in the launcher, as a
  job's own module would — shows its traceback on the page (opened on the last lines),
  in REST and in the CLI; the job is ``failed`` with the traceback as its reason, and the
  node stays online and runs the next job;
* an agent killed with SIGKILL and started again on the same state directory while a
  worker prints loses and repeats no line;
* a flood is rate-limited (``AGENT_LOG_RATE_LINES_S``) with a visible "N lines dropped",
  and the flood's last lines still arrive.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import _stack, log_in, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

AGENT = "agent-node-1"
RATE = 300  # lines per second and worker the agent ships (AGENT_LOG_RATE_LINES_S)
BROKEN_CODE = "def train(:\n    pass\n"  # user code with a syntax error


@pytest.fixture(scope="module")
def logs_stack(tmp_path_factory):
    scripts = tmp_path_factory.mktemp("log-worker")
    python = scripts / "python"
    # The agent starts "python -m agent.runtime.launcher <example>": run the stand-in instead.
    python.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m agent.runtime.launcher tests.support.log_worker\n'
    )
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    (scripts / "broken_user_code.py").write_text(BROKEN_CODE)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AGENT_PYTHON": str(python),
            "LOG_WORKER_DIR": str(scripts),
            "PYTHONPATH": str(scripts),  # where the user code is
            "AGENT_HEARTBEAT_S": "1",
            "AGENT_LOG_RATE_LINES_S": str(RATE),
        }.items():
            mp.setenv(name, value)
        for stack in _stack(tmp_path_factory, suffix="logs", agents=1, slots=2):
            stack.scripts = scripts
            yield stack


_seed = iter(range(1, 10_000))


def start_job(stack, name: str, script: dict, *, workers: int = 1) -> int:
    seed = next(_seed)
    (stack.scripts / f"seed-{seed}.json").write_text(json.dumps(script))
    status, job = stack.api.post(
        "/api/v1/jobs/",
        {
            "name": name,
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 8, "lr": 0.1, "seed": seed},
            "workers": {"initial": workers},
        },
    )
    assert status == 201, job
    return job["id"]


def rest_lines(stack, job_id: int, query: str = "") -> list[dict]:
    lines, since = [], 0
    while True:
        status, page = stack.api.get(f"/api/v1/jobs/{job_id}/logs/?since={since}&limit=5000{query}")
        assert status == 200, page
        lines += page["lines"]
        if not page["more"]:
            return lines
        since = page["lines"][-1]["seq"]


def cli(stack, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADAPTRAIN_SERVER": stack.url, "ADAPTRAIN_TOKEN": stack.token}
    return subprocess.run(
        [sys.executable, "-m", "adaptrain", "logs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def node_online(stack) -> bool:
    return all(n["status"] == "online" for n in stack.api.get("/api/v1/nodes/")[1])


def ended(stack, job_id: int, status: str, timeout_s: float = 90) -> dict:
    def check():
        job = stack.api.get(f"/api/v1/jobs/{job_id}/")[1]
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    job = wait_for(check, timeout_s=timeout_s, what=f"job {job_id} to end", stack=stack)
    assert job["status"] == status, job
    return job


def test_printed_lines_reach_the_page_the_api_and_the_cli(logs_stack, browser):
    stack = logs_stack
    job_id = start_job(
        stack, "printer", {"lines": 150, "rate": 15, "stderr_every": 5, "then": "train"}, workers=2
    )
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        log_in(page, stack, f"/jobs/{job_id}/")
        page.wait_for_selector("#live-state.live-on", timeout=30_000)
        # Lines arrive live, each after its worker's rank; stderr lines are marked.
        page.wait_for_selector(
            "#log-lines .log-line[data-rank='1'] >> text=line 40 of worker 1", timeout=60_000
        )
        page.wait_for_selector("#log-lines .log-line[data-rank='0'] >> text=line 40 of worker 0")
        first = page.locator("#log-lines .log-line", has_text="line 4 of worker 0")
        assert first.get_attribute("data-stream") == "stderr"
        assert first.locator(".log-rank").inner_text() == "[0]"
        assert first.locator(".log-err").inner_text().lower() == "err"
        assert (
            page.locator("#log-lines .log-line", has_text="line 3 of worker 0")
            .locator(".log-err")
            .count()
            == 0
        )
        # Scrolled up, the reader keeps their place while lines keep coming.
        page.eval_on_selector("#log-lines", "el => { el.scrollTop = 0; }")
        page.wait_for_timeout(300)
        top = page.eval_on_selector("#log-lines", "el => el.firstElementChild.dataset.seq")
        count = page.locator("#log-lines .log-line").count()
        page.wait_for_function(
            f"document.querySelectorAll('#log-lines .log-line').length > {count + 10}",
            timeout=30_000,
        )
        assert page.eval_on_selector("#log-lines", "el => el.scrollTop") < 5
        assert page.eval_on_selector("#log-lines", "el => el.firstElementChild.dataset.seq") == top
        assert page.is_visible("#log-latest")
        page.click("#log-latest")
        assert (
            page.eval_on_selector(
                "#log-lines", "el => el.scrollHeight - el.scrollTop - el.clientHeight"
            )
            < 8
        )
        # One worker's lines only.
        page.select_option("#log-worker", "1")
        page.wait_for_function(
            "[...document.querySelectorAll('#log-lines .log-line')].every(l => l.dataset.rank === '1')"
        )
    finally:
        page.close()

    # REST: each worker's lines in order, none twice; the streams as printed.
    wait_for(
        lambda: len(rest_lines(stack, job_id)) == 300,
        timeout_s=60,
        what="all 300 lines to be stored",
        stack=stack,
    )
    lines = rest_lines(stack, job_id)
    assert [x["seq"] for x in lines] == list(range(1, 301))
    for rank in (0, 1):
        mine = [x for x in lines if x["rank"] == rank]
        assert [x["text"] for x in mine] == [f"line {i} of worker {rank}" for i in range(150)]
        assert [x["stream"] for x in mine] == [
            "stderr" if i % 5 == 4 else "stdout" for i in range(150)
        ]

    # The CLI: merged with ranks; -f follows until the job ends.
    printed = cli(stack, str(job_id))
    assert printed.returncode == 0, printed.stderr
    assert "[rank 1] line 148 of worker 1" in printed.stdout.splitlines()
    assert "[rank 1!] line 149 of worker 1" in printed.stderr.splitlines()
    assert "[rank 0!] line 4 of worker 0" in printed.stderr.splitlines()
    env = {**os.environ, "ADAPTRAIN_SERVER": stack.url, "ADAPTRAIN_TOKEN": stack.token}
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adaptrain",
            "logs",
            "-f",
            "--tail",
            "3",
            "--worker",
            "0",
            str(job_id),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)
    assert stack.api.post(f"/api/v1/jobs/{job_id}/cancel/", {})[0] == 200
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert out.splitlines()[-1] == "line 148 of worker 0"  # 149 went to stderr
    assert err.splitlines()[-1] == "line 149 of worker 0"
    ended(stack, job_id, "cancelled")


def test_a_crash_at_import_shows_its_traceback_everywhere_and_the_node_stays_online(
    logs_stack, browser
):
    stack = logs_stack
    job_id = start_job(stack, "broken code", {"import": "broken_user_code", "lines": 5})
    job = ended(stack, job_id, "failed")
    assert "SyntaxError" in job["status_reason"] and "broken_user_code.py" in job["status_reason"]

    lines = rest_lines(stack, job_id)
    texts = [x["text"] for x in lines]
    assert texts[0] == "Traceback (most recent call last):"
    assert any("broken_user_code.py" in t for t in texts)
    assert texts[-1].startswith("SyntaxError")
    assert {x["stream"] for x in lines} == {"stderr"}

    printed = cli(stack, str(job_id))
    assert printed.returncode == 0
    assert "[rank 0!] Traceback (most recent call last):" in printed.stderr.splitlines()
    assert printed.stderr.splitlines()[-1].startswith("[rank 0!] SyntaxError")

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        log_in(page, stack, f"/jobs/{job_id}/")
        page.wait_for_selector("#log-lines .log-line >> text=SyntaxError", timeout=30_000)
        assert page.inner_text("#job-status") == "failed"
        # It opens on the run's last lines: the traceback's end is in view.
        page.wait_for_function(
            "(el => el.scrollHeight - el.scrollTop - el.clientHeight < 8)"
            "(document.querySelector('#log-lines'))"
        )
        page.locator("#logs-card").screenshot(path=str(stack.log_dir / "logs-crash.png"))
    finally:
        page.close()

    assert node_online(stack)
    after = start_job(stack, "after the crash", {"lines": 3})
    ended(stack, after, "succeeded")
    assert [x["text"] for x in rest_lines(stack, after)] == [
        f"line {i} of worker 0" for i in range(3)
    ]


def test_an_agent_killed_and_restarted_loses_and_repeats_no_line(logs_stack):
    stack = logs_stack
    job_id = start_job(stack, "through a restart", {"lines": 800, "rate": 100})
    wait_for(
        lambda: len(rest_lines(stack, job_id)) >= 150,
        timeout_s=90,
        what="the first lines to be stored",
        stack=stack,
    )
    agent = stack.processes.pop(AGENT)
    agent.send_signal(signal.SIGKILL)
    agent.wait(timeout=10)
    stored_at_kill = len(rest_lines(stack, job_id))
    time.sleep(2)  # the worker prints on meanwhile
    stack.restart_agent(AGENT)
    ended(stack, job_id, "succeeded", timeout_s=120)
    lines = rest_lines(stack, job_id)
    assert stored_at_kill < 800
    assert [x["text"] for x in lines] == [f"line {i} of worker 0" for i in range(800)]
    assert [x["seq"] for x in lines] == list(range(1, 801))


def test_a_flood_is_rate_limited_with_a_visible_note(logs_stack, browser):
    stack = logs_stack
    job_id = start_job(stack, "flood", {"lines": 20_000, "rate": 0})
    ended(stack, job_id, "succeeded")
    texts = [x["text"] for x in rest_lines(stack, job_id)]
    notes = [t for t in texts if t.startswith("[adaptrain] ")]
    printed = [int(t.split()[1]) for t in texts if t.startswith("line ")]
    assert notes and all(
        f"lines dropped: this worker wrote more than {RATE} lines/s" in t for t in notes
    )
    assert sum(int(t.split()[1]) for t in notes) + len(printed) == 20_000
    assert printed == sorted(set(printed)) and printed[-1] == 19_999

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        log_in(page, stack, f"/jobs/{job_id}/")
        note = page.locator("#log-lines .log-note", has_text="lines dropped").last
        note.wait_for(timeout=30_000)
        assert note.locator(".log-err").count() == 1  # on stderr, marked
    finally:
        page.close()
