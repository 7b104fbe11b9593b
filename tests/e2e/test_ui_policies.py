"""Policies in headless Chromium: a live decision shows as a chart marker whose hover
names the rule, and the batch size changes; the editor shows a CEL syntax error at the
field it is in and refuses to save it; a replay on a finished job draws its markers, and
so does a replay of unsaved edits; a policy is switched off and on, and deleted after a
confirmation (refused while a job uses it).

Saves docs/screenshots/job.png and policy-editor.png (1280×800) for the README.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import log_in, wait_for, wait_for_job
from tests.support.screenshots import screenshots_dir

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

SCREENSHOTS = screenshots_dir()

DOUBLING = {
    "name": "ui doubling",
    "description": "Double the batch every 200 steps, up to 64.",
    "rules": [
        {
            "name": "grow batch",
            "when": "steps_since_fired >= 200",
            "action": {"type": "set_batch_size", "value": "batch_size * 2"},
            "bounds": {"max": 64},
        }
    ],
}


@pytest.fixture(scope="module")
def page(stack, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    # Leaving the editor with unsaved edits asks (beforeunload); a test just leaves.
    page.on("dialog", lambda dialog: dialog.accept())
    log_in(page, stack, "/policies/")
    yield page
    page.close()


def error_text(page, field_id: str) -> str:
    slot = page.locator(f"#{field_id}-error")
    return slot.inner_text() if slot.count() else ""


def test_decision_marker_appears_and_batch_size_changes_then_replay_draws_markers(stack, page):
    api = stack.api
    status, policy = api.post("/api/v1/policies/", {"definition": DOUBLING})
    assert status == 201, policy
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "ui adaptive digits",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 16, "lr": 0.05, "steps": 1_000_000, "log_every": 10},
            "workers": {"initial": 2},
            "policy": policy["id"],
        },
    )
    assert status == 201, job
    job_id = job["id"]
    try:
        page.goto(f"{stack.url}/jobs/{job_id}/")
        page.wait_for_function(
            "Number(document.querySelector('#chart-batch_size').dataset.markers) >= 1",
            timeout=120_000,
        )
        page.wait_for_function(
            "['32', '64'].includes(document.querySelector('#job-batch-size').textContent)",
            timeout=60_000,
        )
        page.wait_for_selector("#events li.event-decision")

        # Hovering the decision marker tells the rule, its inputs and who acted.
        step = page.evaluate("""() => [...window.adaptrain.charts.charts.batch_size.markers.values()]
                                      .find((m) => m.kind === 'decision').step""")
        page.wait_for_function(f"window.adaptrain.charts.charts.batch_size.lastStep() > {step}")
        box = page.locator("#chart-batch_size").bounding_box()
        tooltip = page.locator("#chart-batch_size + .tooltip")
        # The chart keeps streaming: new steps rescale x between reading the marker's
        # position and the pointer arriving there, so aim again until it is under it.
        for _ in range(10):
            x = page.evaluate(f"window.adaptrain.charts.charts.batch_size.stepToPx({step})")
            page.mouse.move(box["x"] + x, box["y"] + box["height"] / 2)
            tooltip.wait_for(state="visible")
            text = tooltip.inner_text()
            if 'rule "grow batch"' in text:
                break
            page.mouse.move(0, 0)
        assert 'rule "grow batch"' in text
        assert "set_batch_size" in text and "steps_since_fired=" in text
        assert "policy:ui doubling/grow batch" in text

        wait_for_job(
            api,
            job_id,
            lambda j: j["parameters"]["batch_size"] == 64,
            timeout_s=90,
            what="the policy to reach the batch-size bound",
            stack=stack,
        )
        page.wait_for_function("document.querySelector('#job-batch-size').textContent === '64'")
        page.mouse.move(0, 0)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(SCREENSHOTS / "job.png"))
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

    # Replay the policy on the now finished job, from the policy editor.
    page.goto(f"{stack.url}/policies/{policy['id']}/")
    page.wait_for_selector(f"#replay-job option[value='{job_id}']", state="attached")
    page.select_option("#replay-job", str(job_id))
    page.click("#replay-run")
    page.wait_for_function(
        "Number(document.querySelector('#replay-charts canvas[data-metric=batch_size]')?.dataset.markers) >= 1",
        timeout=30_000,
    )
    assert re.search(r"[1-9]\d* decision\(s\)", page.inner_text("#replay-summary"))
    assert page.locator("#replay-decisions tbody tr").count() >= 1
    assert "grow batch" in page.inner_text("#replay-decisions")
    page.locator("#replay").scroll_into_view_if_needed()
    page.locator("#replay").screenshot(path=str(SCREENSHOTS / "policy-replay.png"))
    # The same replay drawn on the job's own page.
    page.click("#replay-summary a")
    page.wait_for_url(f"**/jobs/{job_id}/?replay={policy['id']}")
    page.wait_for_function(
        "[...window.adaptrain.charts.charts.loss.markers.values()].some((m) => m.kind === 'replay')",
        timeout=30_000,
    )


def test_policy_with_a_cel_syntax_error_shows_it_at_the_field_and_is_not_saved(stack, page):
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
    message = page.inner_text("#rule-0-when-error")
    assert "CEL syntax error" in message and "ends too early" in message
    assert "Names you can use" in message  # the names, not the caret lines (the pointer marks it)
    page.locator("#rule-0").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "policy-cel-error.png"))
    assert page.get_attribute("#rule-0-when", "aria-invalid") == "true"
    assert page.locator("#rule-0-when ~ .cel-pointer mark").count() == 1
    assert error_text(page, "rule-0-action-value") == ""

    # Saving it is refused, the error stays at the field and focus goes there.
    page.click("#policy-save")
    page.wait_for_function("document.activeElement && document.activeElement.id === 'rule-0-when'")
    message = page.inner_text("#rule-0-when-error")
    assert "CEL syntax error" in message and "ends too early" in message
    assert "Names you can use" in message  # the names, not the caret lines (the pointer marks it)
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
    status, policy = api.post(
        "/api/v1/policies/",
        {
            "definition": {
                "name": "ui approval",
                "rules": [
                    {
                        "name": "grow once",
                        "when": "step >= 100",
                        "requires_approval": True,
                        "action": {"type": "set_batch_size", "value": "batch_size * 2"},
                        "bounds": {"max": 32},
                    }
                ],
            }
        },
    )
    assert status == 201, policy
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "ui approval digits",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 16, "lr": 0.05, "steps": 1_000_000, "log_every": 10},
            "workers": {"initial": 2},
            "policy": policy["id"],
        },
    )
    assert status == 201, job
    try:
        page.goto(f"{stack.url}/jobs/{job['id']}/")
        item = page.locator("#approval-list li", has_text="grow once")
        item.wait_for(timeout=120_000)
        assert page.inner_text("#job-batch-size") == "16"
        item.get_by_role("button", name="Approve").click()
        page.wait_for_selector("#approval-result.ok")
        page.wait_for_function(
            "document.querySelector('#job-batch-size').textContent === '32'", timeout=60_000
        )
    finally:
        api.post(f"/api/v1/jobs/{job['id']}/cancel/", {})


@pytest.fixture(scope="module")
def finished_job(stack):
    """A short job without a policy, run to the end: recorded metrics to replay on."""
    status, job = stack.api.post(
        "/api/v1/jobs/",
        {
            "name": "ui replay digits",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 16, "lr": 0.05, "steps": 300, "log_every": 10},
            "workers": {"initial": 1},
        },
    )
    assert status == 201, job
    wait_for_job(
        stack.api,
        job["id"],
        lambda j: j["status"] == "succeeded",
        timeout_s=180,
        what="the short job to finish",
        stack=stack,
    )
    return job


def create_policy(api, name: str, when: str = "steps_since_fired >= 200") -> dict:
    status, policy = api.post(
        "/api/v1/policies/",
        {
            "definition": {
                **DOUBLING,
                "name": name,
                "rules": [{**DOUBLING["rules"][0], "when": when}],
            }
        },
    )
    assert status == 201, policy
    return policy


def test_replaying_an_unsaved_edit_on_a_finished_job_shows_its_decisions(stack, page, finished_job):
    api, job_id = stack.api, finished_job["id"]
    policy = create_policy(api, "ui draft replay")
    edited = {
        **policy["definition"],
        "rules": [{**policy["definition"]["rules"][0], "when": "steps_since_fired >= 50"}],
    }
    _, saved_replay = api.post(f"/api/v1/policies/{policy['id']}/replay/", {"job": job_id})
    status, expected = api.post("/api/v1/policies/replay/", {"definition": edited, "job": job_id})
    assert status == 200, expected
    fired = len(expected["decisions"])
    assert fired > len(saved_replay["decisions"]) >= 1

    page.goto(f"{stack.url}/policies/{policy['id']}/")
    page.wait_for_selector("#validation.good")
    page.fill("#rule-0-when", "steps_since_fired >= 50")  # not saved
    page.wait_for_selector(f"#replay-job option[value='{job_id}']", state="attached")
    page.select_option("#replay-job", str(job_id))
    page.click("#replay-run")
    page.wait_for_function(
        f"Number(document.querySelector('#replay-charts canvas[data-metric=batch_size]')?.dataset.markers) === {fired}",
        timeout=30_000,
    )
    summary = page.inner_text("#replay-summary")
    assert "Unsaved edits of v1" in summary and f"{fired} decision(s)" in summary
    assert page.locator("#replay-decisions tbody tr").count() == fired
    steps = [
        int(s) for s in page.locator("#replay-decisions tbody tr td:first-child").all_inner_texts()
    ]
    assert steps == [d["step"] for d in expected["decisions"]]
    stored = api.get(f"/api/v1/policies/{policy['id']}/")[1]
    assert (
        stored["version"] == 1
        and stored["definition"]["rules"][0]["when"] == "steps_since_fired >= 200"
    )

    # The job page draws the same draft, not the saved version.
    page.click("#replay-summary a")
    page.wait_for_url(f"**/jobs/{job_id}/?replay=draft")
    page.wait_for_function(
        f"[...window.adaptrain.charts.charts.loss.markers.values()].filter((m) => m.kind === 'replay').length === {fired}",
        timeout=30_000,
    )
    assert "(unsaved)" in page.inner_text("#replay-text")

    # An invalid edit is not replayed; the error is shown at its field.
    page.go_back()
    page.wait_for_selector("#validation.good")
    page.fill("#rule-0-when", "steps_since_fired >=")
    page.select_option("#replay-job", str(job_id))
    page.click("#replay-run")
    page.wait_for_selector("#replay-summary.error")
    assert "invalid" in page.inner_text("#replay-summary")
    page.wait_for_selector("#rule-0-when-error:not(:empty)")


def test_a_policy_is_disabled_from_the_list_and_enabled_again_from_the_editor(stack, page):
    api = stack.api
    policy = create_policy(api, "ui switch")
    page.goto(f"{stack.url}/policies/")
    row = page.locator(f"#policies tbody tr[data-id='{policy['id']}']")
    row.get_by_role("button", name="Disable policy ui switch").click()
    page.wait_for_selector("#policy-action-result.ok")
    assert row.locator("td.mode").inner_text() == "disabled"
    assert api.get(f"/api/v1/policies/{policy['id']}/")[1]["enabled"] is False
    # Focus stays on the switch, which now enables.
    assert (
        page.evaluate("document.activeElement.getAttribute('aria-label')")
        == "Enable policy ui switch"
    )

    page.goto(f"{stack.url}/policies/{policy['id']}/")
    page.wait_for_selector("#policy-mode:text-is('disabled')")
    # Keyboard only: Tab reaches the switch, its focus is visible, Enter enables.
    page.focus("main")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "policy-toggle":
            break
    assert page.evaluate("document.activeElement.id") == "policy-toggle"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    page.keyboard.press("Enter")
    page.wait_for_selector("#policy-mode:text-is('acting')")
    assert api.get(f"/api/v1/policies/{policy['id']}/")[1]["enabled"] is True
    assert page.inner_text("#policy-toggle") == "Disable"


def test_deleting_a_policy_asks_first_and_is_refused_while_a_job_uses_it(stack, page):
    api = stack.api
    doomed = create_policy(api, "ui delete me")
    in_use = create_policy(api, "ui in use")
    from_editor = create_policy(api, "ui delete from editor")
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "ui policy in use",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 16, "lr": 0.05, "steps": 1_000_000, "log_every": 10},
            "workers": {"initial": 1},
            "policy": in_use["id"],
        },
    )
    assert status == 201, job
    dialog = page.locator("#confirm-delete")
    try:
        page.goto(f"{stack.url}/policies/")
        page.get_by_role("button", name="Delete policy ui in use", exact=True).click()
        dialog.wait_for(state="visible")
        page.click("#confirm-delete-yes")
        page.wait_for_selector("#policy-action-result.error")
        assert f"#{job['id']}" in page.inner_text("#policy-action-result")
        assert api.get(f"/api/v1/policies/{in_use['id']}/")[0] == 200
    finally:
        api.post(f"/api/v1/jobs/{job['id']}/cancel/", {})

    # Escape (or Cancel) keeps it; focus starts on Cancel and comes back to the button.
    row = page.locator(f"#policies tbody tr[data-id='{doomed['id']}']")
    row.get_by_role("button", name="Delete policy ui delete me", exact=True).click()
    dialog.wait_for(state="visible")
    assert "ui delete me" in dialog.inner_text()
    assert page.evaluate("document.activeElement.id") == "confirm-delete-no"
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    assert (
        page.evaluate("document.activeElement.getAttribute('aria-label')")
        == "Delete policy ui delete me"
    )
    assert api.get(f"/api/v1/policies/{doomed['id']}/")[0] == 200

    row.get_by_role("button", name="Delete policy ui delete me", exact=True).click()
    page.click("#confirm-delete-yes")
    row.wait_for(state="detached")
    assert "Deleted policy ui delete me" in page.inner_text("#policy-action-result")
    assert api.get(f"/api/v1/policies/{doomed['id']}/")[0] == 404

    # From the editor: confirmed, it goes back to the list.
    page.goto(f"{stack.url}/policies/{from_editor['id']}/")
    page.wait_for_selector("#policy-mode:text-is('acting')")
    page.click("#policy-delete")
    page.click("#confirm-delete-yes")
    page.wait_for_url("**/policies/?deleted=*")
    page.wait_for_selector("#policy-action-result:has-text('Deleted policy ui delete from editor')")
    wait_for(
        lambda: api.get(f"/api/v1/policies/{from_editor['id']}/")[0] == 404,
        timeout_s=5,
        what="the policy to be gone",
    )
