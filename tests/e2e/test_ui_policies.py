"""Policies in headless Chromium: a live decision shows as a chart marker whose hover
names the rule, and the batch size changes; the editor shows a CEL syntax error at the
field it is in and refuses to save it; a replay on a finished job draws its markers.

Saves docs/screenshots/job.png and policy-editor.png (1280×800) for the README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for_job
from tests.e2e.test_job_page_browser import browser, log_in  # noqa: F401  (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "docs" / "screenshots"

DOUBLING = {
    "name": "ui doubling",
    "description": "Double the batch every 200 steps, up to 64.",
    "rules": [{
        "name": "grow batch",
        "when": "steps_since_fired >= 200",
        "action": {"type": "set_batch_size", "value": "batch_size * 2"},
        "bounds": {"max": 64},
    }],
}


@pytest.fixture(scope="module")
def page(stack, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    log_in(page, stack, "/policies/")
    yield page
    page.close()


def error_text(page, field_id: str) -> str:
    slot = page.locator(f"#{field_id}-error")
    return slot.inner_text() if slot.count() else ""


def test_decision_marker_appears_and_batch_size_changes_then_replay_draws_markers(stack, page):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    api = stack.api
    status, policy = api.post("/api/v1/policies/", {"definition": DOUBLING})
    assert status == 201, policy
    status, job = api.post("/api/v1/jobs/", {
        "name": "ui adaptive digits", "entrypoint": "examples.digits",
        "hyperparameters": {"batch_size": 16, "lr": 0.05, "steps": 1_000_000, "log_every": 10},
        "workers": {"initial": 2}, "policy": policy["id"],
    })
    assert status == 201, job
    job_id = job["id"]
    try:
        page.goto(f"{stack.url}/jobs/{job_id}/")
        page.wait_for_function("Number(document.querySelector('#chart-batch_size').dataset.markers) >= 1",
                               timeout=120_000)
        page.wait_for_function("['32', '64'].includes(document.querySelector('#job-batch-size').textContent)",
                               timeout=60_000)
        page.wait_for_selector("#events li.event-decision")

        # Hovering the decision marker tells the rule, its inputs and who acted.
        step = page.evaluate("""() => [...window.adaptrain.charts.charts.batch_size.markers.values()]
                                      .find((m) => m.kind === 'decision').step""")
        page.wait_for_function(f"window.adaptrain.charts.charts.batch_size.lastStep() > {step}")
        x = page.evaluate(f"window.adaptrain.charts.charts.batch_size.stepToPx({step})")
        box = page.locator("#chart-batch_size").bounding_box()
        page.mouse.move(box["x"] + x, box["y"] + box["height"] / 2)
        tooltip = page.locator("#chart-batch_size + .tooltip")
        tooltip.wait_for(state="visible")
        text = tooltip.inner_text()
        assert 'rule "grow batch"' in text
        assert "set_batch_size" in text and "steps_since_fired=" in text
        assert "policy:ui doubling/grow batch" in text

        wait_for_job(api, job_id, lambda j: j["parameters"]["batch_size"] == 64, timeout_s=90,
                     what="the policy to reach the batch-size bound", stack=stack)
        page.wait_for_function("document.querySelector('#job-batch-size').textContent === '64'")
        page.mouse.move(0, 0)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(SCREENSHOTS / "job.png"))
    finally:
        api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
    wait_for_job(api, job_id, lambda j: j["status"] == "cancelled", timeout_s=30,
                 what="the job to be cancelled", stack=stack)

    # Replay the policy on the now finished job, from the policy editor.
    page.goto(f"{stack.url}/policies/{policy['id']}/")
    page.wait_for_selector(f"#replay-job option[value='{job_id}']", state="attached")
    page.select_option("#replay-job", str(job_id))
    page.click("#replay-run")
    page.wait_for_function(
        "Number(document.querySelector('#replay-charts canvas[data-metric=batch_size]')?.dataset.markers) >= 1",
        timeout=30_000)
    assert re.search(r"[1-9]\d* decision\(s\)", page.inner_text("#replay-summary"))
    assert page.locator("#replay-decisions tbody tr").count() >= 1
    assert "grow batch" in page.inner_text("#replay-decisions")
    page.locator("#replay").scroll_into_view_if_needed()
    page.locator("#replay").screenshot(path=str(SCREENSHOTS / "policy-replay.png"))
    # The same replay drawn on the job's own page.
    page.click("#replay-summary a")
    page.wait_for_url(f"**/jobs/{job_id}/?replay={policy['id']}")
    page.wait_for_function("[...window.adaptrain.charts.charts.loss.markers.values()].some((m) => m.kind === 'replay')",
                           timeout=30_000)


def test_policy_with_a_cel_syntax_error_shows_it_at_the_field_and_is_not_saved(stack, page):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    before = len(stack.api.get("/api/v1/policies/")[1])
    page.goto(f"{stack.url}/policies/")
    page.click("#templates a[href*='gns-adaptive-batch']")
    page.wait_for_url("**/policies/new/?template=gns-adaptive-batch")
    page.wait_for_function("document.querySelector('#rule-0-when').value.includes('gns')")
    assert page.input_value("#p-name") == "GNS-driven adaptive batch size"
    page.wait_for_selector("#validation.good")

    # A syntax error while typing: shown at the "when" field with the position marked.
    page.fill("#rule-0-when", "has(metrics.gns) && gns > (2.0 *")
    page.wait_for_selector("#rule-0-when-error:not(:empty)")
    assert "CEL syntax error" in page.inner_text("#rule-0-when-error")
    page.locator("#rule-0").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "policy-cel-error.png"))
    assert page.get_attribute("#rule-0-when", "aria-invalid") == "true"
    assert page.locator("#rule-0-when ~ .cel-pointer mark").count() == 1
    assert error_text(page, "rule-0-action-value") == ""

    # Saving it is refused, the error stays at the field and focus goes there.
    page.click("#policy-save")
    page.wait_for_function("document.activeElement && document.activeElement.id === 'rule-0-when'")
    assert "CEL syntax error" in page.inner_text("#rule-0-when-error")
    assert "/policies/new/" in page.url
    assert len(stack.api.get("/api/v1/policies/")[1]) == before

    # An error in the action value lands on that field instead.
    page.fill("#rule-0-when", "has(metrics.gns) && gns > 2.0 * double(batch_size)")
    page.fill("#rule-0-action-value", "batch_size * (2")
    page.wait_for_selector("#rule-0-action-value-error:not(:empty)")
    assert error_text(page, "rule-0-when") == ""

    # Fixed, it saves; the advanced JSON view shows the same document.
    page.fill("#rule-0-action-value", "batch_size * 2")
    page.fill("#p-name", "ui gns batch")
    page.wait_for_selector("#validation.good")
    page.click("#tab-json")
    assert '"ui gns batch"' in page.input_value("#p-json")
    page.click("#tab-form")
    page.click("#policy-save")
    page.wait_for_url(re.compile(r".*/policies/\d+/\?saved=1$"))
    assert len(stack.api.get("/api/v1/policies/")[1]) == before + 1
    page.wait_for_selector("#policy-version:has-text('v1')")

    # A second version, and the diff between the two.
    page.fill("#rule-0-cooldown_s", "45")
    page.click("#policy-save")
    page.wait_for_selector("#policy-version:has-text('v2')")
    page.wait_for_selector("#diff .add")
    assert '"cooldown_s": 45' in page.inner_text("#diff .add")
    assert '"cooldown_s": 20' in page.inner_text("#diff .del")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SCREENSHOTS / "policy-editor.png"))


def test_a_decision_that_needs_approval_waits_for_a_click_then_acts(stack, page):
    api = stack.api
    status, policy = api.post("/api/v1/policies/", {"definition": {
        "name": "ui approval",
        "rules": [{"name": "grow once", "when": "step >= 100", "requires_approval": True,
                   "action": {"type": "set_batch_size", "value": "batch_size * 2"}, "bounds": {"max": 32}}],
    }})
    assert status == 201, policy
    status, job = api.post("/api/v1/jobs/", {
        "name": "ui approval digits", "entrypoint": "examples.digits",
        "hyperparameters": {"batch_size": 16, "lr": 0.05, "steps": 1_000_000, "log_every": 10},
        "workers": {"initial": 2}, "policy": policy["id"],
    })
    assert status == 201, job
    try:
        page.goto(f"{stack.url}/jobs/{job['id']}/")
        item = page.locator("#approval-list li", has_text="grow once")
        item.wait_for(timeout=120_000)
        assert page.inner_text("#job-batch-size") == "16"
        item.get_by_role("button", name="Approve").click()
        page.wait_for_selector("#approval-result.ok")
        page.wait_for_function("document.querySelector('#job-batch-size').textContent === '32'", timeout=60_000)
    finally:
        api.post(f"/api/v1/jobs/{job['id']}/cancel/", {})
