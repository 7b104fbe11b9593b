"""The jobs pages in headless Chromium: create a job with the form (errors beside the
fields first), watch its chart move, zoom into it while data streams in.

Saves docs/screenshots/jobs.png and job-new.png (1280×800) for the README.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import log_in, wait_for_job
from tests.support.screenshots import screenshots_dir

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

SCREENSHOTS = screenshots_dir()


@pytest.fixture(scope="module")
def page(stack, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    log_in(page, stack, "/")
    yield page
    page.close()


def points(page, metric: str) -> int:
    return int(page.get_attribute(f"#chart-{metric}", "data-points") or 0)


def test_create_job_form_shows_errors_beside_the_fields_then_the_new_jobs_chart_moves(stack, page):
    page.click("#new-job")
    page.wait_for_url("**/jobs/new/")
    page.wait_for_selector("#job-form[data-ready]", state="attached")

    # A missing batch size and a bad worker count, submitted from the keyboard.
    page.fill("#job-name", "ui form digits")
    page.fill("#hp-batch_size", "")
    page.fill("#workers-initial", "0")
    page.focus("#job-name")
    page.keyboard.press("Enter")
    page.wait_for_selector("#hp-batch_size-error:not(:empty)")
    assert "batch_size is required" in page.inner_text("#hp-batch_size-error")
    assert page.get_attribute("#hp-batch_size", "aria-invalid") == "true"
    assert "greater than or equal to 1" in page.inner_text("#workers-initial-error")
    assert page.is_visible("#form-errors")
    # Focus lands on the first field to fix.
    assert page.evaluate("document.activeElement.id") == "hp-batch_size"
    page.screenshot(path=str(SCREENSHOTS / "job-new.png"))

    page.fill("#hp-batch_size", "32")
    page.fill("#hp-steps", "1000000")
    page.fill("#workers-initial", "2")
    page.click("#job-submit")
    page.wait_for_url(re.compile(r".*/jobs/\d+/$"))
    job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    try:
        wait_for_job(
            stack.api,
            job_id,
            lambda j: j["status"] == "running",
            timeout_s=120,
            what="the job created in the form to run",
            stack=stack,
        )
        page.wait_for_selector("#live-state.live-on", timeout=30_000)
        page.wait_for_function(
            "Number(document.querySelector('#chart-loss').dataset.points) > 3", timeout=60_000
        )

        # Zoom into the first half of the loss chart: every chart follows, and the zoom
        # holds while new points stream in.
        box = page.locator("#chart-loss").bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + 80, y)
        page.mouse.down()
        page.mouse.move(box["x"] + 80 + (box["width"] - 90) / 2, y, steps=6)
        page.mouse.up()
        page.wait_for_function(
            "document.querySelector('#chart-loss').dataset.zoom !== ''", timeout=5_000
        )
        zoom = page.get_attribute("#chart-loss", "data-zoom")
        page.wait_for_function(
            f"document.querySelector('#chart-accuracy').dataset.zoom === '{zoom}'"
        )
        before = points(page, "loss")
        page.wait_for_function(
            f"Number(document.querySelector('#chart-loss').dataset.points) > {before + 5}",
            timeout=60_000,
        )
        assert page.get_attribute("#chart-loss", "data-zoom") == zoom
        assert page.is_visible("#zoom-reset")

        # Hover shows the value under the pointer; a double click resets the zoom.
        page.mouse.move(box["x"] + box["width"] / 2, y)
        page.wait_for_selector("#chart-loss + .tooltip:not([hidden])")
        assert "step" in page.inner_text("#chart-loss + .tooltip")
        page.mouse.dblclick(box["x"] + box["width"] / 2, y)
        page.wait_for_function("document.querySelector('#chart-loss').dataset.zoom === ''")
        assert int(page.inner_text("#job-step")) > 0

        # A dropped connection loses no points: frames are dropped for a while, the
        # socket closes, and the page fills the gap from the stored series.
        page.evaluate("""() => { const ws = window.adaptrain.socket; ws.onmessage = null;
                                 setTimeout(() => ws.close(), 1500); }""")
        page.wait_for_selector("#live-state.live-off", timeout=10_000)
        page.wait_for_selector("#live-state.live-on", timeout=30_000)
        top = page.evaluate("window.adaptrain.charts.charts.loss.lastStep()")
        page.wait_for_function(
            f"window.adaptrain.charts.charts.loss.lastStep() > {top + 50}", timeout=30_000
        )
        shown = set(page.evaluate("window.adaptrain.charts.charts.loss.series.get('job').x"))
        _, stored = stack.api.get(
            f"/api/v1/jobs/{job_id}/metrics/?names=loss&per_rank=false&max_points=100000"
        )
        stored_steps = [s for s in stored["series"][0]["step"] if s <= max(shown)]
        missing = [s for s in stored_steps if s not in shown]
        assert not missing, f"steps missing from the chart after the reconnect: {missing[:10]}"

        # Manual commands: a batch size is sent; scaling a job whose min = max workers (not
        # elastic) is refused with the reason shown beside the field.
        page.fill("#cmd-batch-size", "48")
        page.press("#cmd-batch-size", "Enter")
        page.wait_for_selector("#command-result.ok")
        assert "set_batch_size 48 sent" in page.inner_text("#command-result")
        page.fill("#cmd-workers", "3")
        page.click("form[data-action=scale_workers] button")
        page.wait_for_selector("#command-result.error")
        assert "not supported" in page.inner_text("#cmd-workers-error")
        page.wait_for_function(
            "document.querySelector('#job-batch-size').textContent === '48'", timeout=30_000
        )

        page.goto(f"{stack.url}/")
        page.wait_for_selector(f"#jobs-table tr[data-id='{job_id}'] .status-running")
        page.wait_for_function("Number(document.querySelector('#sum-running').textContent) >= 1")
        assert "ui form digits" in page.inner_text("#jobs-table")
        page.screenshot(path=str(SCREENSHOTS / "jobs.png"))
    finally:
        stack.api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
