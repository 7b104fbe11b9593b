"""The new-job form's archive picker in headless Chromium, over the whole stack: a project
archive made as the form's hint says (``tar czf project.tar.gz -C my_project .``) is
chosen, the job is created with that archive's digest as its bundle, and the agent runs
it. Without an archive the form says so beside the picker and creates nothing."""

from __future__ import annotations

import hashlib
import re
import subprocess

import pytest

from tests.e2e.conftest import log_in, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

TRAIN = "def main():\n    print('trained from the archive the form sent', flush=True)\n"


@pytest.fixture(scope="module")
def page(own_code_stack, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    log_in(page, own_code_stack, "/")
    yield page
    page.close()


def test_a_project_archive_chosen_in_the_form_becomes_the_jobs_bundle(
    own_code_stack, page, tmp_path
):
    stack = own_code_stack
    project = tmp_path / "my_project"
    project.mkdir()
    (project / "train.py").write_text(TRAIN)
    archive = tmp_path / "project.tar.gz"
    subprocess.run(["tar", "czf", str(archive), "-C", str(project), "."], check=True)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    jobs_before = stack.api.get("/api/v1/jobs/?limit=200")[1]["count"]

    page.goto(f"{stack.url}/jobs/new/")
    page.wait_for_selector("#job-form[data-ready]", state="attached")
    assert not page.is_visible("#job-bundle")
    page.check("input[name=code][value=bundle]")
    assert page.is_visible("#job-bundle") and page.is_visible("#job-entrypoint")
    page.fill("#job-name", "from the form's archive")
    page.fill("#job-entrypoint", "train:main")
    for field in ("workers-initial", "workers-min", "workers-max"):
        page.fill(f"#{field}", "1")
    page.fill("#hp-steps", "10")

    # No archive chosen: said beside the picker, nothing created.
    page.click("#job-submit")
    page.wait_for_selector("#job-bundle-error:not(:empty)")
    assert "Choose your project's archive" in page.inner_text("#job-bundle-error")
    assert stack.api.get("/api/v1/jobs/?limit=200")[1]["count"] == jobs_before

    page.set_input_files("#job-bundle", str(archive))
    page.click("#job-submit")
    page.wait_for_url(re.compile(r".*/jobs/\d+/$"), timeout=30_000)
    job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    job = stack.api.get(f"/api/v1/jobs/{job_id}/")[1]
    assert job["bundle"] == digest and job["entrypoint"] == "train:main"
    assert stack.api.get(f"/api/v1/bundles/{digest}/")[1]["files"] == 1

    job = wait_for(
        lambda: (
            (j := stack.api.get(f"/api/v1/jobs/{job_id}/")[1])["status"] in ("succeeded", "failed")
            and j
        ),
        timeout_s=120,
        what="the job to end",
        stack=stack,
    )
    assert job["status"] == "succeeded", job["status_reason"]
    lines = stack.api.get(f"/api/v1/jobs/{job_id}/logs/")[1]["lines"]
    assert [x["text"] for x in lines] == ["trained from the archive the form sent"]
