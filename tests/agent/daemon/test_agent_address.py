"""Without AGENT_ADDRESS the agent advertises the address of the interface it reaches the
control plane through, and refuses to start — naming AGENT_ADDRESS — when that is a
loopback address (or none) while the control plane is not on loopback. Checked on real
routes: network namespaces with a veth pair, or only a loopback route (root)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agent.daemon.config import ConfigError, load_config
from devtools.devstack import NetworkNamespaces

needs_namespaces = pytest.mark.skipif(
    not NetworkNamespaces.available(), reason="network namespaces need root and iproute2"
)

PROBE = (
    "import sys\n"
    "from agent.daemon.config import ConfigError, load_config\n"
    "try:\n"
    "    print(load_config({'AGENT_SERVER': sys.argv[1]}).address)\n"
    "except ConfigError as exc:\n"
    "    print(f'refused: {exc}')\n"
)


def config_in(namespace: str, server: str) -> str:
    """What the agent's configuration works out inside ``namespace``."""
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", PROBE, server],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def veth():
    spaces = NetworkNamespaces(1, tag=f"a{os.getpid() % 10000:04d}")
    spaces.create()
    yield spaces
    spaces.delete()


@pytest.fixture
def loopback_only():
    """A namespace whose only route towards 10.9.9.0/24 goes through loopback."""
    name = f"adaptrain-lo-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(
            ["ip", "-n", name, "route", "add", "10.9.9.0/24", "dev", "lo", "src", "127.0.0.1"],
            check=True,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name])


@needs_namespaces
def test_the_agent_advertises_its_address_on_the_route_to_the_control_plane(veth):
    assert config_in(veth.names[0], f"http://{veth.host}:8000") == veth.addresses[0]


@needs_namespaces
def test_a_loopback_address_towards_a_remote_control_plane_is_refused(loopback_only):
    said = config_in(loopback_only, "http://10.9.9.9:8000")
    assert said.startswith("refused: AGENT_ADDRESS is unset")
    assert "through the loopback address 127.0.0.1" in said
    assert "set AGENT_ADDRESS to this node's address" in said


@needs_namespaces
def test_no_route_to_the_control_plane_is_refused_naming_agent_address(loopback_only):
    said = config_in(loopback_only, "http://10.1.2.3:8000")
    assert said.startswith("refused: AGENT_ADDRESS is unset")
    assert "Network is unreachable" in said


def test_a_control_plane_on_loopback_is_reached_from_loopback():
    assert load_config({"AGENT_SERVER": "http://127.0.0.1:8000"}).address == "127.0.0.1"
    assert load_config({"AGENT_SERVER": "http://localhost:8000"}).address == "127.0.0.1"


def test_agent_address_when_set_is_used_as_it_is():
    config = load_config({"AGENT_SERVER": "http://10.9.9.9:8000", "AGENT_ADDRESS": " node-7 "})
    assert config.address == "node-7"


def test_a_control_plane_name_that_does_not_resolve_is_refused_naming_agent_address():
    with pytest.raises(ConfigError, match="AGENT_ADDRESS is unset .* 'cp.invalid'"):
        load_config({"AGENT_SERVER": "http://cp.invalid:8000"})
