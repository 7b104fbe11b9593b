"""The job page in headless Chromium: log in, open a running job, see the loss chart grow;
restart it from scratch and see the charts start over with run 2 (not run 2 drawn over
run 1), and look back at run 1 with the run selector.

Uses Debian's chromium through Playwright (executable_path); screenshots of the pages
are saved to test-artifacts/ for the README.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"


def test_job_page_chart_grows_while_the_job_trains(stack, browser):
    api = stack.api
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "browser digits",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 1_000_000, "log_every": 10},
            "workers": {"initial": 2},
        },
    )
    assert status == 201, job
    wait_for_job(
        api,
        job["id"],
        lambda j: j["status"] == "running",
        timeout_s=120,
        what="the job to run",
        stack=stack,
    )

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(f"{stack.url}/jobs/{job['id']}/")
        assert "/login/" in page.url  # the page needs a login
        page.fill("#id_username", "e2e")
        page.fill("#id_password", stack.password)
        page.click("button[type=submit]")
        page.wait_for_url(f"**/jobs/{job['id']}/")
        page.wait_for_selector("#live-state.live-on", timeout=30_000)

        def points() -> int:
            return int(page.get_attribute("#chart-loss", "data-points") or 0)

        page.wait_for_function(
            "Number(document.querySelector('#chart-loss').dataset.points || 0) > 0", timeout=60_000
        )
        before = points()
        step_before = int(page.inner_text("#job-step"))
        # New points arrive over the WebSocket, without reloading the page.
        page.wait_for_function(
            f"Number(document.querySelector('#chart-loss').dataset.points || 0) > {before + 5}",
            timeout=60_000,
        )
        assert points() > before
        assert int(page.inner_text("#job-step")) > step_before
        assert page.inner_text("#job-status") == "running"
        time.sleep(0.5)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "job-page.png"), full_page=True)
        restart_resets_the_charts(page, stack, job["id"])
        page.goto(f"{stack.url}/")
        page.wait_for_selector("table.jobs")
        assert "browser digits" in page.inner_text("table.jobs")
        page.screenshot(path=str(ARTIFACTS / "jobs-page.png"), full_page=True)
    finally:
        page.close()
        api.post(f"/api/v1/jobs/{job['id']}/cancel/", {})


def restart_resets_the_charts(page, stack, job_id: int) -> None:
    """On the open job page: cancel, restart from scratch with the page's button, and check
    the charts show run 2 alone; then run 1 again through the run selector."""
    api = stack.api

    def last_loss_step(run: int) -> int:
        _, body = api.get(f"/api/v1/jobs/{job_id}/metrics/?names=loss&per_rank=false&run={run}")
        assert body["run"] == run
        return max((s["step"][-1] for s in body["series"] if s["step"]), default=-1)

    def chart_last_step() -> int:
        return int(page.evaluate("window.adaptrain.charts.charts.loss.lastStep()"))

    assert page.get_attribute("#charts", "data-run") == "1"
    assert api.post(f"/api/v1/jobs/{job_id}/cancel/", {})[0] == 200
    page.wait_for_selector("#restart-button", state="visible", timeout=30_000)
    page.select_option("#restart-from", "scratch")
    page.click("#restart-button")
    page.wait_for_selector("#restart-result.ok")
    # At once, before run 2 reports anything: run 1's lines are gone.
    page.wait_for_selector("#charts[data-run='2']", timeout=10_000)
    wait_for_job(
        api,
        job_id,
        lambda j: j["status"] == "running" and j["current_run"]["number"] == 2,
        timeout_s=120,
        what="run 2 to run",
        stack=stack,
    )
    page.wait_for_function(
        "Number(document.querySelector('#chart-loss').dataset.points || 0) > 0", timeout=60_000
    )
    shown = chart_last_step()
    # Everything drawn is run 2's: nothing past the step run 2 has reached (run 1's points,
    # which went further, would be).
    assert shown <= last_loss_step(2)
    assert int(page.inner_text("#job-step")) <= int(
        api.get(f"/api/v1/jobs/{job_id}/")[1]["last_step"]
    )

    # Run 1 through the selector, then back to following the current run.
    page.wait_for_selector("#chart-run:not([disabled])", timeout=15_000)
    page.select_option("#chart-run", "1")
    page.wait_for_selector("#charts[data-run='1']")
    page.wait_for_function(
        f"window.adaptrain.charts.charts.loss.lastStep() === {last_loss_step(1)}", timeout=10_000
    )
    page.select_option("#chart-run", "")
    page.wait_for_selector("#charts[data-run='2']")
    page.wait_for_function(
        "Number(document.querySelector('#chart-loss').dataset.points || 0) > 0", timeout=30_000
    )
    assert chart_last_step() <= last_loss_step(2)

    # The audit trail says which run each event belongs to: run 2 opens with the restart.
    page.goto(f"{stack.url}/jobs/{job_id}/audit/")
    page.wait_for_selector("#audit tbody tr[data-kind='state']")
    runs = page.eval_on_selector_all(
        "#audit tbody tr",
        "rows => rows.map(r => [r.querySelector('td.event-run').textContent.trim(), r.textContent])",
    )
    assert {"1", "2"} <= {run for run, _ in runs}
    first_of_2 = next(text for run, text in runs if run == "2")
    assert "pending" in first_of_2
