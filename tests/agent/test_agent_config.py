"""The agent reads its configuration once and fails fast on a bad value."""

import pytest

from agent.config import ConfigError, load_config


def test_defaults_and_derived_urls():
    config = load_config({"AGENT_SERVER": "https://cp.example.org/", "AGENT_NAME": "n1"})
    assert config.server == "https://cp.example.org"
    assert config.ws_url == "wss://cp.example.org/ws/agent/"
    assert config.name == "n1" and config.slots >= 1 and config.join_token is None


@pytest.mark.parametrize("env, fragment", [
    ({"AGENT_SERVER": "ftp://x"}, "AGENT_SERVER"),
    ({"AGENT_SLOTS": "many"}, "AGENT_SLOTS='many' is not a valid int"),
    ({"AGENT_SLOTS": "0"}, "AGENT_SLOTS='0' must be positive"),
    ({"AGENT_HEARTBEAT_S": "-1"}, "AGENT_HEARTBEAT_S"),
])
def test_bad_values_name_the_variable(env, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_config(env)
