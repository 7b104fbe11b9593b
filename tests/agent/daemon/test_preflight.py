"""The agent refuses to start on an environment with two TensorFlow builds installed (they
overwrite each other's package), saying which to remove; one build, or none, is fine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.daemon.preflight import PreflightError, check_environment


@pytest.mark.parametrize(
    "installed",
    [["numpy", "tensorflow-cpu"], ["tensorflow"], ["numpy", "websockets"], ["Tensorflow_CPU"]],
)
def test_one_tensorflow_build_or_none_is_fine(installed):
    check_environment(lambda: installed)


def test_tensorflow_and_tensorflow_cpu_together_are_refused_with_what_to_do():
    with pytest.raises(PreflightError) as exc:
        check_environment(lambda: ["numpy", "tensorflow", "tensorflow-cpu"])
    message = str(exc.value)
    assert "both tensorflow and tensorflow-cpu are installed" in message
    assert "pip uninstall -y tensorflow-cpu" in message and "adaptrain[node,gpu]" in message
    assert "adaptrain[node,cpu]" in message


def test_this_environment_passes_and_the_agent_exits_with_the_message_when_it_does_not(tmp_path):
    check_environment()  # the test venv has tensorflow-cpu only
    # A fake second build in a directory on the path: the real agent entry point refuses.
    dist = tmp_path / "tensorflow-2.21.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tensorflow\nVersion: 2.21.0\n")
    env = {
        "PYTHONPATH": str(tmp_path),
        "AGENT_SERVER": "http://127.0.0.1:9",
        "AGENT_JOIN_TOKEN": "x",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "agent"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "agent: both tensorflow and tensorflow-cpu are installed" in done.stderr
