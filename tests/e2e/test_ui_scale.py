"""Scaling an elastic job from its page in headless Chromium: the Workers command grows a
running digits job from 2 to 3 workers; the page shows the new cluster version and the
third worker taking its rank, while training goes on."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import log_in, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def page(stack, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    log_in(page, stack, "/")
    yield page
    page.close()


def test_scale_button_grows_an_elastic_job_and_the_page_shows_the_new_worker(stack, page):
    status, job = stack.api.post(
        "/api/v1/jobs/",
        {
            "name": "ui elastic digits",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 48, "lr": 0.05, "steps": 1_000_000, "log_every": 10},
            "workers": {"initial": 2, "min": 1, "max": 3},
        },
    )
    assert status == 201, job
    job_id = job["id"]
    try:
        wait_for_job(
            stack.api,
            job_id,
            lambda j: j["status"] == "running" and j["last_step"] >= 20 and j,
            timeout_s=180,
            what="training to start",
            stack=stack,
        )
        page.goto(f"{stack.url}/jobs/{job_id}/")
        page.wait_for_selector("#workers tbody tr[data-rank='1']")
        version = int(page.inner_text("#job-cluster-version"))
        page.fill("#cmd-workers", "3")
        page.click("form[data-action=scale_workers] button")
        page.wait_for_selector("#command-result.ok")
        # The page polls the job: the new version and a third worker with rank 2 in it.
        page.wait_for_function(
            f"Number(document.querySelector('#job-cluster-version').textContent) === {version + 1}",
            timeout=240_000,
        )
        page.wait_for_function(
            "document.querySelector('#job-workers').textContent === '3'", timeout=60_000
        )
        row = page.locator("#workers tbody tr[data-rank='2']")
        assert row.locator("td").nth(1).inner_text() == "2"
        assert row.locator("td").nth(4).inner_text() == "running"
        step = int(page.inner_text("#job-step"))
        page.wait_for_function(
            f"Number(document.querySelector('#job-step').textContent) > {step + 20}",
            timeout=120_000,
        )
    finally:
        stack.api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
