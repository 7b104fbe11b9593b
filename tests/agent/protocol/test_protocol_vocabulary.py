"""The shared vocabulary (agent.protocol.vocabulary) holds the names every part of the
system spells the same way, in their canonical order, each with a description, and
serves them as JSON."""

from __future__ import annotations

import enum
import json

from agent.protocol import PROTOCOL_VERSION
from agent.protocol import vocabulary as v


def test_the_names_are_the_contracts():
    assert v.STRATEGIES == ("ssgd", "sma", "pair")
    assert v.TOPOLOGIES == ("ring", "tree", "star", "hierarchical", "auto", "routed_ring")
    assert v.ACTIONS == (
        "set_batch_size",
        "set_lr",
        "scale_workers",
        "set_strategy",
        "set_topology",
        "checkpoint",
        "pause",
        "resume",
        "stop",
    )
    assert v.COMMAND_TYPES == ("start", *v.ACTIONS)
    assert v.AGENT_ACTIONS == ("scale_workers",)
    assert v.LR_SCALING_RULES == ("none", "linear", "sqrt", "adascale")
    assert v.WORKER_EVENTS == ("standby", "rescaled", "left", "peer_failed", "exited")
    assert v.JOB_REPORT_STATUSES == ("running", "succeeded", "failed", "stopped")
    assert v.WORKER_REPORT_STATES == ("running", "left", "failed")
    contract = {
        "loss", "accuracy", "throughput", "step_time", "batch_size", "lr", "workers", "gns",
        "grad_variance", "grad_snr", "comm_time",
    }  # fmt: skip
    assert contract <= set(v.METRICS)
    assert set(v.METRICS) - contract == {
        "val_accuracy", "compute_time", "gpu_util", "gpu_mem", "ring_hop_mbps", "link_mbps_min",
    }  # fmt: skip
    assert v.BOOKKEEPING_METRICS == ("checkpoint_step", "param_checksum")


def test_every_name_is_described():
    groups = [
        v.STRATEGIES, v.TOPOLOGIES, v.ACTIONS, v.COMMAND_TYPES, v.AGENT_ACTIONS,
        v.LR_SCALING_RULES, v.WORKER_EVENTS, v.JOB_REPORT_STATUSES, v.WORKER_REPORT_STATES,
        v.METRICS, v.BOOKKEEPING_METRICS,
    ]  # fmt: skip
    for terms in groups:
        assert list(terms.descriptions) == list(terms)
        assert all(terms.descriptions[name].strip() for name in terms)


def test_every_action_says_what_value_it_takes():
    assert set(v.ACTION_VALUES) == set(v.ACTIONS)
    assert v.ACTION_VALUES["set_batch_size"] is int and v.ACTION_VALUES["set_lr"] is float
    assert v.ACTION_VALUES["set_strategy"] == v.STRATEGIES
    assert v.ACTION_VALUES["stop"] is None


def test_terms_make_enum_members_as_django_choices_take_them():
    strategy = enum.Enum("Strategy", v.STRATEGIES.enum_members())
    assert [(m.name, m.value) for m in strategy] == [
        ("SSGD", "ssgd"),
        ("SMA", "sma"),
        ("PAIR", "pair"),
    ]


def test_the_vocabulary_is_served_as_json():
    served = json.loads(json.dumps(v.vocabulary()))
    assert served["protocol"] == PROTOCOL_VERSION
    assert [s["name"] for s in served["strategies"]] == list(v.STRATEGIES)
    assert served["actions"][0] == {
        "name": "set_batch_size",
        "description": v.ACTIONS.descriptions["set_batch_size"],
        "value": "int",
    }
    set_topology = next(a for a in served["actions"] if a["name"] == "set_topology")
    assert set_topology["value"] == "choice" and set_topology["choices"] == list(v.TOPOLOGIES)
    assert next(a for a in served["actions"] if a["name"] == "pause")["value"] is None
    assert [m["name"] for m in served["metrics"]] == list(v.METRICS)
