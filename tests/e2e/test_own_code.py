"""A user's own code over the whole stack — PostgreSQL, Redis, web, Celery, a real agent
and worker processes: a project directory outside the package, packed and uploaded by
``adaptrain run``, fetched by the agent with its node credential, checked, unpacked once
and run by two workers in the job's own directory.

* the workers import the project's modules and read its files by relative paths; what
  they write lands in the job's directory; a restart of the job runs the same bundle
  without fetching or unpacking it again;
* a missing module, a missing function and a syntax error in the user's code end the job
  ``failed`` with the error as its reason and the traceback in its logs, and the node
  stays online;
* a bundle whose stored bytes changed fails its job's start (digest mismatch) and
  nothing of it is unpacked;
* a node whose owner does not accept bundles (AGENT_CODE) refuses a start it was sent
  anyway (the job fails saying so), new bundle jobs wait with a reason saying what to
  set, and run once the node accepts bundles again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

AGENT = "agent-node-1"

TRAIN = '''\
"""A user's training script (here: no training, to keep the test short)."""
import json
import os
import pathlib

from helpers import greeting


def main():
    config = json.loads(pathlib.Path("data/config.json").read_text())
    print(greeting(config["name"]), "in", os.path.basename(os.getcwd()), flush=True)
    pathlib.Path(f"out-{os.environ['ADAPTRAIN_RANK']}.txt").write_text("done")
'''


def make_project(root, **extra: str):
    """A project directory of the user's (not in the package), with ``extra`` files."""
    files = {
        "train.py": TRAIN,
        "helpers.py": "def greeting(name):\n    return f'hello {name} from the bundle'\n",
        "data/config.json": json.dumps({"name": "e2e"}),
        **extra,
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def adaptrain_run(stack, project, *args: str) -> dict:
    env = {**os.environ, "ADAPTRAIN_SERVER": stack.url, "ADAPTRAIN_TOKEN": stack.token}
    result = subprocess.run(
        [sys.executable, "-m", "adaptrain", "run", str(project), "--json", "--batch-size", "8"]
        + ["--lr", "0.1", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ended(stack, job_id: int, timeout_s: float = 120) -> dict:
    def check():
        job = stack.api.get(f"/api/v1/jobs/{job_id}/")[1]
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(check, timeout_s=timeout_s, what=f"job {job_id} to end", stack=stack)


def log_texts(stack, job_id: int, run: int | None = None) -> list[str]:
    query = f"&run={run}" if run else ""
    status, page = stack.api.get(f"/api/v1/jobs/{job_id}/logs/?limit=5000{query}")
    assert status == 200, page
    return [line["text"] for line in page["lines"]]


def node(stack) -> dict:
    (n,) = stack.api.get("/api/v1/nodes/")[1]
    return n


def test_a_project_runs_from_its_bundle_and_a_restart_reuses_it(own_code_stack, tmp_path):
    stack = own_code_stack
    project = make_project(tmp_path / "my_project")
    job = adaptrain_run(stack, project, "--entrypoint", "train:main", "--workers", "2")
    digest = job["bundle"]
    finished = ended(stack, job["id"])
    assert finished["status"] == "succeeded", finished["status_reason"]
    texts = log_texts(stack, job["id"])
    assert texts.count(f"hello e2e from the bundle in job-{job['id']}") == 2, texts
    work = stack.state_dir / "work" / f"job-{job['id']}"
    assert {p.name for p in work.glob("out-*.txt")} == {"out-0.txt", "out-1.txt"}
    unpacked = stack.state_dir / "bundles" / digest
    assert (unpacked / "helpers.py").is_file() and not (unpacked / "out-0.txt").exists()
    inode = unpacked.stat().st_ino

    status, _ = stack.api.post(f"/api/v1/jobs/{job['id']}/restart/", {"reason": "again"})
    assert status in (200, 201, 202), _
    wait_for(
        lambda: stack.api.get(f"/api/v1/jobs/{job['id']}/runs/")[1]["results"][0]["number"] == 2,
        timeout_s=30,
        what="run 2",
        stack=stack,
    )
    again = ended(stack, job["id"])
    assert again["status"] == "succeeded", again["status_reason"]
    assert (
        log_texts(stack, job["id"], run=2).count(f"hello e2e from the bundle in job-{job['id']}")
        == 2
    )
    assert unpacked.stat().st_ino == inode  # the same directory: not fetched or unpacked again
    agent_log = (stack.log_dir / f"{AGENT}.log").read_text()
    assert agent_log.count(f"code bundle {digest[:12]}: unpacked") == 1


@pytest.mark.parametrize(
    "entrypoint, error",
    [
        ("nosuch:main", "ModuleNotFoundError: No module named 'nosuch'"),
        ("train:nosuch", "module 'train' has no function 'nosuch'"),
        ("broken:main", "SyntaxError"),
    ],
)
def test_errors_in_the_users_code_fail_the_job_with_the_traceback_in_its_logs(
    own_code_stack, tmp_path, entrypoint, error
):
    stack = own_code_stack
    project = make_project(tmp_path / "project", **{"broken.py": "def main(:\n    pass\n"})
    job = adaptrain_run(stack, project, "--entrypoint", entrypoint)
    finished = ended(stack, job["id"])
    assert finished["status"] == "failed"
    assert error in finished["status_reason"], finished["status_reason"]
    texts = wait_for(
        lambda: (t := log_texts(stack, job["id"])) and any(error in x for x in t) and t,
        timeout_s=30,
        what="the traceback in the job's logs",
        stack=stack,
    )
    assert "Traceback (most recent call last):" in texts
    assert node(stack)["status"] == "online"


def test_a_bundle_changed_in_storage_fails_its_jobs_start_and_nothing_is_unpacked(
    own_code_stack, tmp_path
):
    stack = own_code_stack
    project = make_project(tmp_path / "project", **{"tampered.txt": "yes"})
    job = adaptrain_run(stack, project, "--entrypoint", "train:main", "--name", "first")
    digest = job["bundle"]
    assert ended(stack, job["id"])["status"] == "succeeded"
    # Someone changes the stored archive; a node fetching it must notice, not run it.
    stored = stack.bundle_dir / digest[:2] / f"{digest}.tar.gz"
    stored.write_bytes(stored.read_bytes() + b"\0")
    (stack.state_dir / "bundles" / digest).rename(tmp_path / "set-aside")  # fetch again
    status, second = stack.api.post(
        "/api/v1/jobs/",
        {
            "name": "tampered",
            "entrypoint": "train:main",
            "bundle": digest,
            "hyperparameters": {"batch_size": 8, "lr": 0.1},
            "workers": {"initial": 1},
        },
    )
    assert status == 201, second
    finished = ended(stack, second["id"])
    assert finished["status"] == "failed"
    assert (
        f"code bundle digest mismatch: the job names sha256 {digest}" in (finished["status_reason"])
    )
    assert not (stack.state_dir / "bundles" / digest).exists()
    assert not [p for p in (stack.state_dir / "bundles").iterdir() if p.name.startswith(".")]
    assert node(stack)["status"] == "online"


def test_a_node_that_does_not_accept_bundles_refuses_them_and_jobs_wait_saying_why(
    own_code_stack, tmp_path
):
    stack = own_code_stack
    project = make_project(tmp_path / "project", **{"refused.txt": "1"})
    # The agent dies without saying goodbye (kill -9; a SIGTERM'd agent says goodbye and
    # its node goes offline at once): the node still counts as online for a while, so a
    # job is placed there — and then its owner restarts it not accepting bundles.
    agent = stack.processes.pop(AGENT)
    agent.kill()
    agent.wait(timeout=20)
    job = adaptrain_run(stack, project, "--entrypoint", "train:main")
    stack.agent_env[AGENT]["AGENT_CODE"] = "installed,examples"
    try:
        stack.restart_agent(AGENT)
        finished = ended(stack, job["id"])
        assert finished["status"] == "failed"
        assert "this node does not run code of kind 'bundles'" in finished["status_reason"]
        assert "AGENT_CODE is installed,examples" in finished["status_reason"]
        wait_for(
            lambda: node(stack)["code_kinds"] == ["installed", "examples"],
            timeout_s=30,
            what="the node to say it runs no bundles",
            stack=stack,
        )
        # A new bundle job waits, saying what to set.
        waiting = adaptrain_run(stack, project, "--entrypoint", "train:main")
        reason = wait_for(
            lambda: stack.api.get(f"/api/v1/jobs/{waiting['id']}/")[1]["status_reason"],
            timeout_s=30,
            what="a pending reason",
            stack=stack,
        )
        assert "no enrolled node runs code bundles" in reason and "AGENT_CODE" in reason
        assert stack.api.get(f"/api/v1/jobs/{waiting['id']}/")[1]["status"] == "pending"
        assert node(stack)["status"] == "online"
    finally:
        stack.agent_env[AGENT].pop("AGENT_CODE", None)
        agent = stack.processes.pop(AGENT)
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        stack.restart_agent(AGENT)
    # The owner accepts bundles again: the waiting job runs.
    finished = ended(stack, waiting["id"])
    assert finished["status"] == "succeeded", finished["status_reason"]
