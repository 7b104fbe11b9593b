"""The agent reads its configuration once and fails fast on a bad value."""

import os
import sys

import pytest

from agent.daemon.config import ConfigError, load_config


def test_defaults_and_derived_urls():
    config = load_config(
        {"AGENT_SERVER": "https://cp.example.org/", "AGENT_NAME": "n1", "AGENT_ADDRESS": "10.0.0.5"}
    )
    assert config.server == "https://cp.example.org"
    assert config.ws_url == "wss://cp.example.org/ws/agent/"
    assert config.name == "n1" and config.slots >= 1 and config.join_token is None
    assert config.on_exit == "detach" and config.orphan_grace_s == 600.0
    assert config.address == "10.0.0.5"
    assert load_config({"AGENT_ON_EXIT": " Stop "}).on_exit == "stop"


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"AGENT_SERVER": "ftp://x"}, "AGENT_SERVER"),
        ({"AGENT_SLOTS": "many"}, "AGENT_SLOTS='many' is not a valid int"),
        ({"AGENT_SLOTS": "0"}, "AGENT_SLOTS='0' must be positive"),
        ({"AGENT_HEARTBEAT_S": "-1"}, "AGENT_HEARTBEAT_S"),
        ({"AGENT_ON_EXIT": "kill"}, "AGENT_ON_EXIT='kill' must be detach or stop"),
        ({"AGENT_ORPHAN_GRACE_S": "0"}, "AGENT_ORPHAN_GRACE_S='0' must be positive"),
    ],
)
def test_bad_values_name_the_variable(env, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_config(env)


def test_labels_are_parsed_from_key_value_pairs():
    config = load_config({"AGENT_LABELS": " gpu=a100 , zone=eu-1,,"})
    assert config.labels == {"gpu": "a100", "zone": "eu-1"}
    assert load_config({}).labels == {}
    assert load_config({"AGENT_LABELS": "path=a=b"}).labels == {"path": "a=b"}


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("gpu", "'gpu' is not key=value"),
        ("gpu=", "'gpu=' is not key=value"),
        ("=a100", "'=a100' is not key=value"),
        ("gpu=a100,gpu=v100", "label 'gpu' is given twice"),
        ("gpu=" + "x" * 201, "is too long"),
    ],
)
def test_bad_labels_name_the_variable_and_the_entry(raw, fragment):
    with pytest.raises(ConfigError, match="AGENT_LABELS") as caught:
        load_config({"AGENT_LABELS": raw})
    assert fragment in str(caught.value)


def test_log_settings_have_defaults_and_bounds():
    config = load_config({})
    assert (config.log_flush_s, config.log_rate_lines_s) == (0.2, 2000)
    assert (config.log_file_max_bytes, config.log_line_max_bytes) == (16 << 20, 16 << 10)
    custom = load_config({"AGENT_LOG_RATE_LINES_S": "50", "AGENT_LOG_FILE_MAX_BYTES": "1000000"})
    assert (custom.log_rate_lines_s, custom.log_file_max_bytes) == (50, 1_000_000)
    with pytest.raises(ConfigError, match="AGENT_LOG_FILE_MAX_BYTES=1000 must be at least 65536"):
        load_config({"AGENT_LOG_FILE_MAX_BYTES": "1000"})
    with pytest.raises(ConfigError, match="AGENT_LOG_RATE_LINES_S='0' must be positive"):
        load_config({"AGENT_LOG_RATE_LINES_S": "0"})


def test_agent_gpus_none_gives_cpu_slots_and_no_gpu_labels():
    from agent.daemon.config import load_config

    config = load_config({"AGENT_GPUS": "none", "AGENT_LABELS": "zone=a"})
    assert config.gpus.gpus == ()
    assert config.slots == (os.cpu_count() or 1)
    assert config.labels == {"zone": "a"}


def test_agent_gpus_malformed_is_a_config_error():
    from agent.daemon.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="AGENT_GPUS"):
        load_config({"AGENT_GPUS": "0,,2"})


def test_slots_default_to_the_gpus_nvml_lists_and_user_labels_win(monkeypatch):
    from tests.support.fake_nvml import FakeGpu, FakeNvml

    nvml = FakeNvml([FakeGpu(uuid="GPU-aaaa"), FakeGpu(uuid="GPU-bbbb")])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)  # what `import pynvml` finds
    config = load_config({"AGENT_LABELS": "gpu=mine"})
    assert config.gpus.uuids == ["GPU-aaaa", "GPU-bbbb"]
    assert config.slots == 2
    assert config.labels["gpu_count"] == "2"
    assert config.labels["gpu"] == "mine"  # AGENT_LABELS over the automatic label
    assert load_config({"AGENT_GPUS": "1"}).slots == 1
    assert load_config({"AGENT_SLOTS": "5"}).slots == 5


def test_agent_code_says_which_kinds_of_code_the_node_runs():
    assert load_config({}).code == ("bundles", "installed", "examples")  # the default
    assert load_config({"AGENT_CODE": " Examples, installed "}).code == ("installed", "examples")
    with pytest.raises(ConfigError, match="AGENT_CODE='bundle': 'bundle' is not a kind of code"):
        load_config({"AGENT_CODE": "bundle"})


def test_the_credential_file_defaults_to_the_state_dir_and_may_be_elsewhere(tmp_path):
    state = tmp_path / "state"
    assert load_config({"AGENT_STATE_DIR": str(state)}).credential_file == state / "credential"
    elsewhere = load_config(
        {"AGENT_STATE_DIR": str(state), "AGENT_CREDENTIAL_FILE": "/run/adaptrain/credential"}
    )
    assert str(elsewhere.credential_file) == "/run/adaptrain/credential"
