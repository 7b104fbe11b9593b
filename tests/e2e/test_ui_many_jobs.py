"""Managing many jobs in headless Chromium over the whole stack (issue 20): the jobs list's
search by label with the filters kept in the URL, archive from the job page (hidden from
the list, shown by its filter), ticking two jobs to compare their curves overlaid, the
job page's per-worker step times, its log-scale toggle and labels editor, and delete —
refused while the job has not ended, done once it has.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import log_in, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"


def create(api, name: str, *, workers: int, labels: dict, steps: int = 60, **extra) -> int:
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": name,
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": steps, "log_every": 10},
            "workers": {"initial": workers},
            "labels": labels,
            **extra,
        },
    )
    assert status == 201, job
    return job["id"]


def test_search_archive_compare_step_times_log_scale_and_delete(stack, browser):
    api = stack.api
    vision = create(api, "many vision", workers=2, labels={"team": "vision"})
    nlp = create(api, "many nlp", workers=1, labels={"team": "nlp"})
    # Never placed (no node has this label): a job that has not ended.
    stuck = create(api, "many stuck", workers=1, labels={}, node_selector={"gpu": "none-such"})
    for job_id in (vision, nlp):
        wait_for_job(
            api,
            job_id,
            lambda j: j["status"] == "succeeded",
            timeout_s=240,
            what=f"job {job_id} to succeed",
            stack=stack,
        )

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        # Search by label; the filter is in the URL and in the search box.
        log_in(page, stack, "/")
        page.goto(f"{stack.url}/?q=team%3Dvision")
        page.wait_for_selector(f"#jobs-table tr[data-id='{vision}']")
        page.wait_for_function(
            "document.querySelectorAll('#jobs-table tbody tr[data-id]').length === 1"
        )
        assert page.input_value("#jobs-q") == "team=vision"
        assert "team=vision" in page.inner_text(f"#jobs-table tr[data-id='{vision}'] td.labels")
        # Progress: the step of the steps the job trains for.
        detail = api.get(f"/api/v1/jobs/{vision}/")[1]
        total = detail["progress"]["total"]
        assert total, detail["progress"]
        progress = page.inner_text(f"#jobs-table tr[data-id='{vision}'] td.progress")
        assert re.fullmatch(rf"\d+ / {total}", progress.strip()), progress

        # Filters by node and by owner, kept in the URL like the others.
        node = detail["workers"][0]["node"]
        page.goto(f"{stack.url}/?node={node}")
        # (the server draws the unfiltered rows first; the filtered list replaces them)
        page.wait_for_function(
            f"document.querySelector(\"#jobs-table tr[data-id='{nlp}']\") !== null && "
            f"document.querySelector(\"#jobs-table tr[data-id='{stuck}']\") === null"
        )
        assert page.input_value("#jobs-node") == node
        page.goto(f"{stack.url}/?owner=no-such-user")
        page.wait_for_function(
            "document.querySelectorAll('#jobs-table tbody tr[data-id]').length === 0"
        )
        assert page.input_value("#jobs-owner") == "no-such-user"

        # The job page: each worker's step time, the log-scale toggle, labels edited.
        page.goto(f"{stack.url}/jobs/{vision}/")
        page.wait_for_function(
            "[...document.querySelectorAll('#workers tbody td.step-time')]"
            ".filter((td) => / ms \\(/.test(td.textContent)).length === 2",
            timeout=30_000,
        )
        page.check("#log-scale")
        page.wait_for_selector("#chart-loss[data-scale='log']")
        assert page.get_attribute("#chart-batch_size", "data-scale") == "linear"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "job-page-log-scale.png"), full_page=True)
        page.uncheck("#log-scale")
        page.wait_for_selector("#chart-loss[data-scale='linear']")
        page.fill("#labels-input", "team=vision, sweep=lr")
        page.click("#labels-save")
        page.wait_for_selector("#manage-result.ok")
        assert api.get(f"/api/v1/jobs/{vision}/")[1]["labels"] == {"team": "vision", "sweep": "lr"}

        # Archive the nlp job from its page: gone from the list until the filter shows it.
        page.goto(f"{stack.url}/jobs/{nlp}/")
        page.click("#archive")
        page.wait_for_selector("#manage-result.ok")
        assert page.inner_text("#archive") == "Unarchive"
        page.goto(f"{stack.url}/")
        page.wait_for_selector(f"#jobs-table tr[data-id='{vision}']")
        assert page.query_selector(f"#jobs-table tr[data-id='{nlp}']") is None
        page.select_option("#jobs-archived", "any")
        page.wait_for_selector(f"#jobs-table tr[data-id='{nlp}']")
        assert "archived=any" in page.url
        assert "(archived)" in page.inner_text(f"#jobs-table tr[data-id='{nlp}']")
        page.screenshot(path=str(ARTIFACTS / "jobs-filtered.png"))

        # Tick both to compare: their loss curves overlaid on one chart.
        assert page.is_disabled("#compare")
        page.check(f"#jobs-table tr[data-id='{vision}'] input.pick")
        page.check(f"#jobs-table tr[data-id='{nlp}'] input.pick")
        page.click("#compare")
        page.wait_for_url(re.compile(r".*/jobs/compare/\?ids=\d+,\d+$"))
        page.wait_for_selector("#compare[data-jobs='2']", timeout=30_000)
        assert page.evaluate("window.adaptrain.charts.loss.series.size") == 2
        page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
        legend = page.inner_text("#compare-jobs")
        assert "many vision" in legend and "many nlp" in legend

        # Delete: refused while the job has not ended, done once it has.
        page.goto(f"{stack.url}/jobs/{stuck}/")
        page.click("#delete")
        page.click("#delete")
        page.wait_for_selector("#manage-result.error")
        assert "only an ended job can be deleted" in page.inner_text("#manage-result")
        assert api.post(f"/api/v1/jobs/{stuck}/cancel/", {})[0] == 200
        page.click("#delete")
        page.click("#delete")
        page.wait_for_url(f"**/?deleted={stuck}")
        assert api.get(f"/api/v1/jobs/{stuck}/")[0] == 404
    finally:
        page.close()
        api.post(f"/api/v1/jobs/{stuck}/cancel/", {})
