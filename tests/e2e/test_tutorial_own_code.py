"""docs/your-own-code.md, done as it says, over the whole stack (PostgreSQL, Redis, web,
Celery, a real agent, two TensorFlow workers): its files are written into a project
directory in the test's own temporary directory (not in the package), its commands run
from there as a user would type them, and the job must succeed on two workers with the
GNS policy evaluated — a decision recorded and the batch grown.

The files and commands are read from the page itself (its fenced blocks whose info string
names a file, and its ``shell`` blocks), so the page cannot drift from what is tested.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "your-own-code.md"
BLOCK = re.compile(r"^```(\w+)(?: (\S+))?\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, str | None, str]]:
    """(language, file name or None, text) of each fenced block of the tutorial."""
    return [(m[1], m[2], m[3]) for m in BLOCK.finditer(TUTORIAL.read_text())]


def commands() -> list[list[str]]:
    """The commands of the tutorial's shell blocks, in order (``export`` lines are the
    environment, which the test sets to its stack)."""
    lines = [line for lang, _, text in blocks() if lang == "shell" for line in text.splitlines()]
    return [shlex.split(line, comments=True) for line in lines if not line.startswith("export ")]


def test_the_tutorial_trains_a_keras_script_on_two_workers_with_the_gns_policy(
    own_code_stack, tmp_path
):
    stack = own_code_stack
    files = [(name, text) for _, name, text in blocks() if name]
    assert {name for name, _ in files} == {"my_project/train.py", "my_project/.adaptrainignore"}
    for name, text in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "my_project" / "checkpoints").mkdir()
    (tmp_path / "my_project" / "checkpoints" / "old.bin").write_bytes(b"\0" * 1000)

    env = {
        **os.environ,
        "ADAPTRAIN_SERVER": stack.url,
        "ADAPTRAIN_TOKEN": stack.token,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    run, logs = commands()
    assert run[:2] == ["adaptrain", "run"] and logs[:3] == ["adaptrain", "logs", "-f"]

    def adaptrain(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "adaptrain", *argv[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    ran = adaptrain(run, timeout_s=600)
    assert ran.returncode == 0, ran.stdout + ran.stderr  # --watch: 0 when the job succeeded
    assert "packed 2 file(s)" in ran.stderr  # train.py and .adaptrainignore, no checkpoints
    assert "from template gns-adaptive-batch" in ran.stderr
    job_id = int(re.search(r"created job (\d+)", ran.stdout)[1])

    job = stack.api.get(f"/api/v1/jobs/{job_id}/")[1]
    assert job["status"] == "succeeded", job["status_reason"]
    assert job["entrypoint"] == "train:main" and job["bundle"]
    runs = stack.api.get(f"/api/v1/jobs/{job_id}/runs/")[1]["results"]
    assert runs[0]["workers_max_seen"] == 2, runs[0]
    decisions = [
        e for e in stack.api.get(f"/api/v1/jobs/{job_id}/events/")[1] if e["kind"] == "decision"
    ]
    assert decisions, "the GNS policy never fired"
    inputs = decisions[0]["data"]["inputs"]
    assert inputs["gns"] > 2 * inputs["batch_size"] and inputs["batch_size"] == 16
    assert job["parameters"]["batch_size"] >= 32

    followed = adaptrain([*logs[:3], str(job_id)], timeout_s=120)
    assert followed.returncode == 0, followed.stderr
    assert re.search(r"\[rank 0\] accuracy [01]\.\d{3} after 3000 steps", followed.stdout), (
        followed.stdout[-2000:]
    )
    wait_for(
        lambda: stack.api.get("/api/v1/nodes/")[1][0]["status"] == "online",
        timeout_s=10,
        what="the node to be online",
        stack=stack,
    )
