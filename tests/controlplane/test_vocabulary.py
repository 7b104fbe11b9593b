"""One vocabulary (agent.protocol.vocabulary) for the whole control plane: Django's
choices, the policy engine and the hyper-parameter validation read it, the API serves it,
and every page carries it for the browser's modules."""

from __future__ import annotations

import json
import re

import pytest
from rest_framework.test import APIClient

from agent.protocol import vocabulary
from controlplane.jobs.apis.jobs import TEXT_HYPERPARAMETERS
from controlplane.jobs.models import Command, Job
from controlplane.policies import engine

pytestmark = pytest.mark.django_db


def test_the_control_plane_reads_its_words_from_the_shared_vocabulary():
    assert Job.Strategy.values == list(vocabulary.STRATEGIES)
    assert Job.Topology.values == list(vocabulary.TOPOLOGIES)
    assert Command.Type.values == list(vocabulary.COMMAND_TYPES)
    assert engine.ACTION_TYPES == tuple(vocabulary.ACTIONS)
    assert engine.METRIC_NAMES == frozenset(vocabulary.METRICS)
    assert engine.CHOICE_ACTIONS == {
        "set_strategy": ("ssgd", "sma", "pair"),
        "set_topology": ("ring", "tree", "star", "hierarchical", "auto", "routed_ring"),
    }
    assert engine.NUMERIC_ACTIONS == {"set_batch_size": int, "set_lr": float, "scale_workers": int}
    assert TEXT_HYPERPARAMETERS["lr_scaling"][0] == tuple(vocabulary.LR_SCALING_RULES)


def test_the_api_serves_the_vocabulary_to_signed_in_clients_only(api):
    assert APIClient().get("/api/v1/vocabulary/").status_code in (401, 403)
    reply = api.get("/api/v1/vocabulary/")
    assert reply.status_code == 200
    body = reply.json()
    assert body == json.loads(json.dumps(vocabulary.vocabulary()))
    actions = {a["name"]: a for a in body["actions"]}
    assert actions["set_strategy"]["choices"] == ["ssgd", "sma", "pair"]
    assert actions["set_lr"]["value"] == "float" and actions["stop"]["value"] is None
    assert all(a["description"] for a in body["actions"] + body["metrics"])


def test_pages_carry_the_vocabulary_and_the_policy_editor_offers_its_choices(client, user):
    client.force_login(user)
    page = client.get("/policies/new/").content.decode()
    embedded = re.search(
        r'<script id="vocabulary" type="application/json">(.*?)</script>', page, re.S
    )
    assert embedded and json.loads(embedded.group(1)) == json.loads(
        json.dumps(vocabulary.vocabulary())
    )
    for action, choices in (
        ("set_strategy", vocabulary.STRATEGIES),
        ("set_topology", vocabulary.TOPOLOGIES),
    ):
        options = re.search(f'<datalist id="choices-{action}">(.*?)</datalist>', page, re.S).group(
            1
        )
        assert re.findall(r'<option value="([^"]+)">', options) == list(choices)
