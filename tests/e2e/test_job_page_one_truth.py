"""The job page never contradicts itself (issue 20, bug 5), in headless Chromium over the
whole stack: a running two-worker job is cancelled while its page is open. From the
moment the page loads until the agent has reported its workers gone, the page must never
show an ended status over a workers table that says a worker is running (the `job` frame
used to redraw the status at once while the workers waited for the next 4 s poll), and it
ends with no worker shown running. Then the job's worker output has no nanobind
"leaked …" warning (issue 20, bug 9: printed at interpreter exit).
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import log_in, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# Records, on every change of the page, whether the status badge shows an ended job while
# a worker row shows a state of a process that runs.
WATCH = """
() => {
  window.contradictions = [];
  const check = () => {
    const status = document.getElementById('job-status').textContent.trim();
    if (!['succeeded', 'failed', 'cancelled'].includes(status)) return;
    const states = [...document.querySelectorAll('#workers tbody tr td:nth-child(5)')]
      .map((td) => td.textContent.trim());
    const live = states.filter((s) => ['starting', 'joining', 'standby', 'running'].includes(s));
    if (live.length) window.contradictions.push(`${status} with workers ${states.join(',')}`);
  };
  new MutationObserver(check).observe(document.getElementById('job'),
    { subtree: true, childList: true, characterData: true });
  check();
}
"""


def test_a_cancelled_job_page_never_shows_its_workers_running(stack, browser):
    api = stack.api
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "one truth",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 1_000_000, "log_every": 10},
            "workers": {"initial": 2},
        },
    )
    assert status == 201, job
    job_id = job["id"]
    try:
        wait_for_job(
            api,
            job_id,
            lambda j: (
                j["status"] == "running"
                and [w["state"] for w in j["workers"]] == ["running", "running"]
            ),
            timeout_s=120,
            what="both workers to run",
            stack=stack,
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:
            log_in(page, stack, f"/jobs/{job_id}/")
            page.wait_for_selector("#live-state.live-on", timeout=30_000)
            page.wait_for_function(
                "[...document.querySelectorAll('#workers tbody td:nth-child(5)')]"
                ".filter((td) => td.textContent.trim() === 'running').length === 2",
                timeout=30_000,
            )
            page.evaluate(WATCH)
            assert api.post(f"/api/v1/jobs/{job_id}/cancel/", {})[0] == 200
            page.wait_for_selector("#job-status:text-is('cancelled')", timeout=30_000)
            # Until the agent reports, the workers are shown stopping, then exited.
            wait_for_job(
                api,
                job_id,
                lambda j: all(w["state"] not in ("running", "starting") for w in j["workers"]),
                timeout_s=60,
                what="the agent to report the workers gone",
                stack=stack,
            )
            page.wait_for_function(
                "[...document.querySelectorAll('#workers tbody td:nth-child(5)')]"
                ".every((td) => ['exited', 'failed', 'left'].includes(td.textContent.trim()))",
                timeout=30_000,
            )
            assert page.evaluate("window.contradictions") == []
        finally:
            page.close()
    finally:
        api.post(f"/api/v1/jobs/{job_id}/cancel/", {})

    # The workers' output, to its end (they are gone), has no leak report.
    lines, since = [], 0
    while True:
        status, page_ = api.get(f"/api/v1/jobs/{job_id}/logs/?since={since}&limit=5000")
        assert status == 200, page_
        lines += page_["lines"]
        if not page_["more"]:
            break
        since = page_["lines"][-1]["seq"]
    assert lines, "the workers printed nothing"
    assert [line["text"] for line in lines if "leaked" in line["text"]] == []
