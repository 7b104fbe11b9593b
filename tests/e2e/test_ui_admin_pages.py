"""Nodes, API tokens and a job's audit trail in headless Chromium; every page fits a
narrow (390 px) screen without sideways scrolling.

Saves docs/screenshots/nodes.png and tokens.png (1280×800) for the README.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import log_in
from tests.support.screenshots import screenshots_dir

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

SCREENSHOTS = screenshots_dir()


@pytest.fixture(scope="module")
def page(stack, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    log_in(page, stack, "/nodes/")
    yield page
    page.close()


def test_nodes_page_lists_the_agent_online(stack, page):
    page.goto(f"{stack.url}/nodes/")
    row = page.locator("#nodes tbody tr", has_text="node-1")
    row.locator(".status-online").wait_for()
    assert row.locator("td").nth(3).inner_text() == "4"  # slots
    page.screenshot(path=str(SCREENSHOTS / "nodes.png"))


def test_token_secret_is_shown_once_and_the_token_can_be_revoked(stack, page):
    page.goto(f"{stack.url}/tokens/")
    page.wait_for_selector("#tokens tbody tr")
    # A missing name is reported at the field.
    page.click("#token-create")
    page.wait_for_selector("#token-name-error:not(:empty)")
    assert page.get_attribute("#token-name", "aria-invalid") == "true"

    page.fill("#token-name", "ui laptop")
    page.fill("#token-expires", "30")
    page.keyboard.press("Enter")
    page.wait_for_selector("#token-secret:not([hidden])")
    secret = page.input_value("#secret-value")
    assert len(secret) > 20
    row = page.locator("#tokens tbody tr", has_text="ui laptop")
    row.locator(".status-active").wait_for()
    assert secret not in page.inner_text("#tokens")  # the list shows a prefix only
    page.screenshot(path=str(SCREENSHOTS / "tokens.png"))

    page.click("#secret-done")
    assert page.is_hidden("#token-secret")
    assert page.input_value("#secret-value") == ""
    row.get_by_role("button", name="Revoke ui laptop").click()
    row.locator(".status-revoked").wait_for()
    status, _ = stack.api.get("/api/v1/nodes/")
    assert status == 200  # the session's own token still works


def test_audit_trail_lists_a_jobs_events_and_filters_them_by_kind(stack, page):
    api = stack.api
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "ui audited",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 100},
            "workers": {"initial": 2},
        },
    )
    assert status == 201, job
    api.post(f"/api/v1/jobs/{job['id']}/cancel/", {})
    page.goto(f"{stack.url}/jobs/{job['id']}/audit/")
    page.wait_for_selector("#audit tbody tr[data-kind='state']")
    assert "created" in page.inner_text("#audit")
    total = page.locator("#audit tbody tr").count()
    page.uncheck("input[name=kind][value=state]")
    assert page.locator("#audit tbody tr[data-kind='state']:visible").count() == 0
    assert f"of {total} events shown" in page.inner_text("#audit-count")
    page.check("input[name=kind][value=state]")
    page.fill("#audit-search", "created")
    assert page.locator("#audit tbody tr:visible").count() >= 1
    assert all("created" in t for t in page.locator("#audit tbody tr:visible").all_inner_texts())


@pytest.mark.parametrize(
    "path", ["/", "/jobs/new/", "/policies/", "/policies/new/", "/nodes/", "/tokens/"]
)
def test_pages_fit_a_narrow_screen(stack, browser, path):
    narrow = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        log_in(narrow, stack, path)
        narrow.wait_for_load_state("networkidle")
        width = narrow.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} scrolls sideways at 390 px ({width} px wide)"
    finally:
        narrow.close()
