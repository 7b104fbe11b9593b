"""The setup the *Add a node* page shows comes from one template: the systemd unit passes
``systemd-analyze verify`` (with a real ExecStart: this venv's ``adaptrain-agent``), has
the settings the design relies on, the environment file is one the agent reads, and
docs/agent-install.md shows exactly what the code renders."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.daemon.config import load_config
from agent.protocol import EXIT_REFUSED
from controlplane.jobs import node_setup

ROOT = Path(__file__).resolve().parents[3]
AGENT = Path(sys.executable).parent / "adaptrain-agent"


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    systemd_analyze = shutil.which("systemd-analyze")
    if systemd_analyze is None:
        pytest.fail("systemd-analyze is not installed (Debian: apt-get install systemd)")
    unit = tmp_path / "adaptrain-agent.service"
    unit.write_text(unit_text)
    return subprocess.run(
        [systemd_analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    assert AGENT.exists(), f"{AGENT} is missing: install the project (scripts/bootstrap.sh)"
    env_file = tmp_path / "agent.env"
    env_file.write_text(node_setup.env_file(server="http://127.0.0.1:8000", join_token="join_x"))
    unit = node_setup.systemd_unit(exec_start=str(AGENT), env_file_path=str(env_file))
    result = verify(unit, tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path):
    # The check above means something: a wrong setting or a missing program is reported.
    unit = node_setup.systemd_unit(exec_start=str(AGENT)).replace(
        "KillMode=process", "KillMode=processes"
    )
    assert "kill mode" in verify(unit, tmp_path).stderr
    missing = node_setup.systemd_unit(exec_start=str(tmp_path / "no-such-agent"))
    assert verify(missing, tmp_path).returncode != 0


def test_the_unit_keeps_workers_across_agent_restarts_and_stops_retrying_when_refused():
    unit = node_setup.systemd_unit()
    for setting in (
        "KillMode=process",
        f"EnvironmentFile={node_setup.ENV_FILE}",
        "StateDirectory=adaptrain-agent",
        "Restart=on-failure",
        f"RestartPreventExitStatus={EXIT_REFUSED}",
        f"ExecStart={node_setup.EXEC_START}",
        f"User={node_setup.USER}",
    ):
        assert f"\n{setting}\n" in unit, setting


def test_the_environment_file_is_one_the_agent_reads(tmp_path):
    text = node_setup.env_file(server="http://127.0.0.1:8000", join_token="join_abc", name="gpu-1")
    env = dict(
        line.split("=", 1)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert set(env) == {"AGENT_SERVER", "AGENT_JOIN_TOKEN", "AGENT_NAME", "AGENT_STATE_DIR"}
    config = load_config(env)
    assert (config.server, config.join_token, config.name) == (
        "http://127.0.0.1:8000",
        "join_abc",
        "gpu-1",
    )
    assert str(config.state_dir) == node_setup.STATE_DIR
    assert config.address == "127.0.0.1"  # worked out: the control plane is on loopback


def test_the_install_doc_shows_what_the_code_renders():
    doc = (ROOT / "docs" / "agent-install.md").read_text()
    assert node_setup.systemd_unit() in doc
    assert node_setup.env_file(server="https://train.example.org", join_token="join_…") in doc
    assert node_setup.install_commands("cpu") in doc
    assert node_setup.pip_install("gpu") in doc
    assert node_setup.start_commands() in doc


def test_a_kind_of_node_it_does_not_know_is_refused():
    with pytest.raises(ValueError, match="kind must be one of cpu, gpu"):
        node_setup.node_setup(server="http://x", join_token="j", kind="tpu")
