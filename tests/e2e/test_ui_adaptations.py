"""The job page's "What adaptation did" table in headless Chromium, on the real stack: a
job (two TensorFlow workers) starts with the table's empty state; a policy doubles its
batch size; the change appears as a row (batch size 32 → 64, by the policy's rule) without
a reload, and its throughput before and after fill in as the workers report, matching the
REST figures.

Saves docs/screenshots/job-adaptations.png.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import log_in, wait_for, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "docs" / "screenshots"

DOUBLE_ONCE = {
    "name": "ui adaptations",
    "rules": [
        {
            "name": "double once",
            "when": "step >= 60 && batch_size == 32",
            "action": {"type": "set_batch_size", "value": "batch_size * 2"},
            "bounds": {"max": 64},
        }
    ],
}


@pytest.fixture(scope="module")
def page(stack, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    log_in(page, stack, "/")
    yield page
    page.close()


def test_policy_batch_change_appears_with_throughput_before_and_after(stack, page):
    api = stack.api
    status, policy = api.post("/api/v1/policies/", {"definition": DOUBLE_ONCE})
    assert status == 201, policy
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "ui adaptations digits",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 1_000_000, "log_every": 10},
            "workers": {"initial": 2},
            "policy": policy["id"],
        },
    )
    assert status == 201, job
    job_id = job["id"]
    try:
        page.goto(f"{stack.url}/jobs/{job_id}/")
        # Before any change: the empty state says what will be listed.
        page.wait_for_selector("#adaptations tr.empty:has-text('No adaptation yet')")

        # The policy fires; the row appears without a reload (command/decision events).
        row = page.locator("#adaptations tbody tr[data-state=applied]")
        row.wait_for(timeout=90_000)
        cells = row.locator("td")
        assert cells.nth(1).inner_text().strip() == "batch size 32 → 64"
        assert "ui adaptations / double once" in cells.nth(2).inner_text()

        # The after window fills in as the workers report (its first point is skipped).
        page.wait_for_function(
            """() => {
                 const td = document.querySelectorAll('#adaptations tbody tr[data-state=applied] td')[3];
                 return td && /^[\\d.]+ → [\\d.]+$/.test(td.textContent.trim());
               }""",
            timeout=60_000,
        )
        body = wait_for(
            lambda: (
                (b := api.get(f"/api/v1/jobs/{job_id}/adaptations/")[1])
                and b["adaptations"][0]["after"]["throughput"] is not None
                and b
            ),
            timeout_s=10,
            what="the REST adaptations to show the after window",
            stack=stack,
        )
        [rest] = body["adaptations"]
        assert rest["action"] == "set_batch_size" and rest["value_to"] == 64
        assert rest["before"]["batch_size"] == 32 and rest["after"]["batch_size"] == 64
        assert rest["before"]["throughput"] > 0 and rest["after"]["throughput"] > 0
        before_text = page.evaluate(
            "document.querySelectorAll('#adaptations tbody tr[data-state=applied] td')[3]"
            ".textContent.split(' → ')[0]"
        )
        assert float(before_text) == pytest.approx(rest["before"]["throughput"], rel=1e-3)
        # Efficiency and time saved: figures, or the honest "not enough data" when the
        # windows lack a noise scale — never empty.
        for i in (4, 5, 6):
            assert cells.nth(i).inner_text().strip(), i
        if rest["time_saved_s"] is None:
            assert cells.nth(6).inner_text().strip() == "not enough data"
        else:
            assert cells.nth(6).inner_text().strip()[0] in "+−"
        page.locator("#adaptations-card").scroll_into_view_if_needed()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.locator("#adaptations-card").screenshot(path=str(SCREENSHOTS / "job-adaptations.png"))
    finally:
        api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
    wait_for_job(
        api,
        job_id,
        lambda j: j["status"] == "cancelled",
        timeout_s=30,
        what="the job to be cancelled",
        stack=stack,
    )
