"""The GPU node's agent image (Dockerfile.agent) and its compose file, checked as far as
can be here: the Dockerfile is read by Docker's own parser (the ``dockerfile`` package)
and says what docs/agent-install.md promises; the compose file validates with Debian's
docker-compose. No Docker engine runs here: the image is not built and no container
runs (docs/agent-install.md says so too)."""

from __future__ import annotations

from pathlib import Path

import dockerfile

from controlplane.jobs import node_setup
from tests.test_docker_compose import compose

ROOT = Path(__file__).resolve().parent.parent
GPU_AGENT = "docker-compose.gpu-agent.yml"
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


def _final_stage() -> list[dockerfile.Command]:
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile.agent"))
    assert {c.cmd for c in commands} <= INSTRUCTIONS
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return list(commands[last_from:])


def test_the_agent_image_installs_the_gpu_node_and_runs_the_agent_unprivileged():
    stage = _final_stage()
    base = stage[0].value[0]
    assert base.startswith("python:") and "-slim" in base
    runs = " ".join(v for c in stage if c.cmd == "RUN" for v in c.value)
    assert "[node,gpu]" in runs and "apt-get" not in runs  # CUDA from the wheels
    env = dict(zip(*(iter(v for c in stage if c.cmd == "ENV" for v in c.value),) * 2, strict=True))
    assert env["AGENT_STATE_DIR"] == node_setup.STATE_DIR
    assert env["AGENT_ON_EXIT"] == "stop"  # the agent is the container's first process
    assert [c.value for c in stage if c.cmd == "VOLUME"] == [(node_setup.STATE_DIR,)]
    assert [c.value for c in stage if c.cmd == "USER"] == [("adaptrain",)]
    (entrypoint,) = (c for c in stage if c.cmd == "ENTRYPOINT")
    assert entrypoint.json and entrypoint.value == ("adaptrain-agent",)
    assert 'adaptrain-agent = "agent.__main__:main"' in (ROOT / "pyproject.toml").read_text()


def test_the_gpu_agent_compose_file_validates(tmp_path):
    env_file = tmp_path / "agent.env"
    env_file.write_text(node_setup.env_file(server="http://10.0.0.1:8000", join_token="join_x"))
    env = {"PATH": "/usr/bin:/bin", "AGENT_ENV_FILE": str(env_file)}
    result = compose("config", env=env, file=GPU_AGENT)
    assert result.returncode == 0, result.stderr
    config = result.stdout
    assert "dockerfile: Dockerfile.agent" in config and "network_mode: host" in config
    assert "driver: nvidia" in config and "- gpu" in config
    assert f"agent-state:{node_setup.STATE_DIR}" in config
    assert "AGENT_JOIN_TOKEN: join_x" in config  # the environment file the page shows


def test_the_gpu_agent_compose_file_asks_for_its_environment_file():
    result = compose("config", "-q", env={"PATH": "/usr/bin:/bin"}, file=GPU_AGENT)
    assert result.returncode != 0 and "AGENT_ENV_FILE" in result.stderr
