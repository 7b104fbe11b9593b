"""docker-compose.yml is valid (checked by Debian's docker-compose without an engine).

Only the file is checked: no image is built and no container runs here.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {"SECRET_KEY": "x" * 40, "POSTGRES_PASSWORD": "pw", "PATH": "/usr/bin:/bin"}


def compose(*args, env=ENV, file="docker-compose.yml"):
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is not installed; scripts/test installs it (apt-get install docker-compose)"
        )
    return subprocess.run(
        [binary, "-f", str(ROOT / file), *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_compose_file_is_valid():
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_defines_every_service_from_one_image():
    result = compose("config", "--services")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"postgres", "redis", "web", "worker", "beat", "agent"}
    config = compose("config").stdout
    assert config.count("image: adaptrain:latest") == 4


def test_compose_refuses_to_run_without_secrets():
    result = compose("config", "-q", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr or "POSTGRES_PASSWORD" in result.stderr
