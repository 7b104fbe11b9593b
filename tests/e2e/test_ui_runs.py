"""Runs on the job page in headless Chromium: a job that wrote a checkpoint is cancelled,
restarted with the page's Restart button, and its second run resumes from that
checkpoint on the real agent (its first step reported is past the checkpoint's)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import log_in, wait_for, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def test_a_cancelled_job_restarts_from_its_checkpoint_with_the_restart_button(
    stack, browser, tmp_path
):
    api = stack.api
    status, job = api.post(
        "/api/v1/jobs/",
        {
            "name": "restartable",
            "entrypoint": "examples.digits",
            "hyperparameters": {
                "batch_size": 32,
                "lr": 0.05,
                "steps": 1_000_000,
                "log_every": 5,
                "checkpoint_dir": str(tmp_path / "ckpt"),
                "checkpoint_every": 20,
            },
            "workers": {"initial": 1},
        },
    )
    assert status == 201, job
    job_id = job["id"]

    def checkpoint_step() -> int:
        _, body = api.get(f"/api/v1/jobs/{job_id}/metrics/?names=checkpoint_step&per_rank=false")
        values = [v for s in body["series"] for v in s["value"]]
        return int(max(values)) if values else 0

    wait_for(checkpoint_step, timeout_s=180, what="run 1 to write a checkpoint", stack=stack)
    assert api.post(f"/api/v1/jobs/{job_id}/cancel/", {})[0] == 200
    wait_for_job(
        api,
        job_id,
        lambda j: j["status"] == "cancelled",
        timeout_s=30,
        what="the cancel",
        stack=stack,
    )
    saved_at_cancel = checkpoint_step()

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        log_in(page, stack, f"/jobs/{job_id}/")
        page.wait_for_selector("#runs tr[data-run='1'] .status-cancelled")
        assert page.is_visible("#restart-button")
        page.fill("#restart-reason", "continue from the checkpoint")
        page.click("#restart-button")
        page.wait_for_selector("#restart-result.ok")
        assert "latest checkpoint" in page.inner_text("#restart-result")
        page.wait_for_selector("#runs tr[data-run='2']")
        wait_for_job(
            api,
            job_id,
            lambda j: j["status"] == "running" and j["current_run"]["number"] == 2,
            timeout_s=120,
            what="run 2 to run",
            stack=stack,
        )
        page.wait_for_selector("#runs tr[data-run='2'] .status-running", timeout=15_000)
        assert not page.is_visible("#restart-button")
        _, runs = api.get(f"/api/v1/jobs/{job_id}/runs/")
        run2 = runs["results"][0]
        assert run2["number"] == 2 and run2["reason"] == "continue from the checkpoint"
        # The latest checkpoint when the restart was asked for: the stopping workers may have
        # written (and reported) more after the cancel was read back.
        saved = run2["resumed_from_step"]
        assert saved >= saved_at_cancel and run2["resumed_from"].endswith(f"/ckpt/step-{saved:09d}")

        # The workers restored the checkpoint: each reports its batch size once as it starts
        # training, at the step it starts from (0 for run 1, the checkpoint's for run 2).
        def start_steps() -> set[int]:
            _, body = api.get(f"/api/v1/jobs/{job_id}/metrics/?names=batch_size&since=0")
            return {step for s in body["series"] if s["rank"] is not None for step in s["step"]}

        wait_for(
            lambda: saved in start_steps(),
            timeout_s=60,
            what=f"run 2 to start training at step {saved}",
            stack=stack,
        )
    finally:
        page.close()
        api.post(f"/api/v1/jobs/{job_id}/cancel/", {})
