"""The job page in headless Chromium: log in, open a running job, see the loss chart grow.

Uses Debian's chromium through Playwright (executable_path); screenshots of the pages
are saved to test-artifacts/ for the README.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("chromium is not installed; scripts/test installs it (apt-get install chromium)")
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


def test_job_page_chart_grows_while_the_job_trains(stack, browser):
    api = stack.api
    status, job = api.post("/api/v1/jobs/", {
        "name": "browser digits", "entrypoint": "examples.digits",
        "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 1_000_000, "log_every": 10},
        "workers": {"initial": 2},
    })
    assert status == 201, job
    wait_for_job(api, job["id"], lambda j: j["status"] == "running", timeout_s=120,
                 what="the job to run", stack=stack)

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

        page.wait_for_function("Number(document.querySelector('#chart-loss').dataset.points || 0) > 0",
                               timeout=60_000)
        before = points()
        step_before = int(page.inner_text("#job-step"))
        # New points arrive over the WebSocket, without reloading the page.
        page.wait_for_function(
            f"Number(document.querySelector('#chart-loss').dataset.points || 0) > {before + 5}",
            timeout=60_000)
        assert points() > before
        assert int(page.inner_text("#job-step")) > step_before
        assert page.inner_text("#job-status") == "running"
        time.sleep(0.5)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "job-page.png"), full_page=True)
        page.goto(f"{stack.url}/")
        page.wait_for_selector("table.jobs")
        assert "browser digits" in page.inner_text("table.jobs")
        page.screenshot(path=str(ARTIFACTS / "jobs-page.png"), full_page=True)
    finally:
        page.close()
        api.post(f"/api/v1/jobs/{job['id']}/cancel/", {})
