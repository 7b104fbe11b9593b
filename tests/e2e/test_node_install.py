"""The node install: ``pip install 'adaptrain[node]'`` into a fresh virtual environment gives
a working agent without the control plane's stack. The test builds the project's wheel,
installs it with the ``node`` extra into a new venv, starts ``adaptrain-agent`` from there
(outside the repository, so nothing is imported from the source tree) against a real
control plane, and checks that the node enrols and heartbeats while neither Django nor a
PostgreSQL driver is installed in that environment, let alone imported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import _stack, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bare_stack(tmp_path_factory):
    """A control plane with no agent of its own."""
    yield from _stack(tmp_path_factory, suffix="nodeinstall", agents=0, slots=1)


@pytest.fixture(scope="module")
def node_venv(tmp_path_factory) -> Path:
    """A fresh venv with only the wheel and its ``node`` extra installed."""
    where = tmp_path_factory.mktemp("node-install")
    wheels = where / "wheels"
    print("[node-install] building the wheel (compiles the native library) …", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        check=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("adaptrain-*.whl")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print("[node-install] installing the wheel with the node extra …", flush=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[node]"], check=True
    )
    return venv


def _installed(venv: Path) -> set[str]:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {line.split("==")[0].lower() for line in out.splitlines() if line}


def test_the_node_extra_installs_an_agent_that_enrols_without_the_control_planes_stack(
    bare_stack, node_venv, tmp_path
):
    installed = _installed(node_venv)
    assert {"adaptrain", "numpy", "websockets"} <= installed
    absent = {
        "django",
        "djangorestframework",
        "channels",
        "celery",
        "psycopg2-binary",
        "tensorflow-cpu",
    }
    assert not absent & installed, f"the node extra pulled in {sorted(absent & installed)}"
    python = str(node_venv / "bin" / "python")
    # The agent's own imports, in this environment: no Django anywhere in sys.modules.
    probe = subprocess.run(
        [python, "-c", "import sys, agent.daemon.agent, agent.protocol, adaptrain.rest; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'psycopg2', 'rest_framework', 'tensorflow')))"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "[]"

    stack = bare_stack
    join_token = stack.manage("create_join_token", "--label", "node-install").strip()
    env = {
        "PATH": f"{node_venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AGENT_SERVER": stack.url,
        "AGENT_JOIN_TOKEN": join_token,
        "AGENT_NAME": "pip-node",
        "AGENT_ADDRESS": "127.0.0.1",
        "AGENT_SLOTS": "1",
        "AGENT_STATE_DIR": str(tmp_path / "state"),
        "AGENT_ON_EXIT": "stop",
    }
    log = open(tmp_path / "agent.log", "wb")
    started = time.monotonic()
    agent = subprocess.Popen(
        [str(node_venv / "bin" / "adaptrain-agent")],
        cwd=tmp_path,  # not the repository: every import comes from the installed wheel
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def online():
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-3000:]
            nodes = {n["name"]: n for n in stack.api.get("/api/v1/nodes/")[1]}
            return nodes.get("pip-node", {}).get("status") == "online"

        wait_for(online, timeout_s=60, what="the pip-installed agent to enrol", stack=stack)
        print(f"[node-install] enrolled {time.monotonic() - started:.2f} s after start", flush=True)
        # It keeps heartbeating.
        first = {n["name"]: n for n in stack.api.get("/api/v1/nodes/")[1]}["pip-node"]
        wait_for(
            lambda: (
                {n["name"]: n for n in stack.api.get("/api/v1/nodes/")[1]}["pip-node"][
                    "last_heartbeat"
                ]
                != first["last_heartbeat"]
            ),
            timeout_s=30,
            what="a second heartbeat",
            stack=stack,
        )
        assert "django" not in (tmp_path / "agent.log").read_text().lower()
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(timeout=30)
        log.close()
