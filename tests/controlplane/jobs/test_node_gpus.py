"""A node's GPUs as its heartbeats say them: stored on the node as the latest heartbeat
said (a heartbeat that does not say keeps them), listed by the nodes API; a malformed GPU
entry is a 400 that names the field."""

from __future__ import annotations

import pytest

from agent.protocol.rest import GpuStat, Heartbeat
from controlplane.jobs.services.nodes import join_token_create
from tests.controlplane.jobs.conftest import as_node, enrol

pytestmark = pytest.mark.django_db

H200 = GpuStat(
    uuid="GPU-5b0e7f1a-2c3d-4e5f-8a9b-0c1d2e3f4a5b",
    name="NVIDIA H200",
    memory_total_mib=143771.0,
    utilization_pct=87.0,
    memory_used_mib=40960.0,
    temperature_c=61.0,
    power_w=512.5,
    job=4,
    rank=1,
)


def _beat(credential: str, body: dict):
    return as_node(credential).post("/api/v1/agent/heartbeat/", body, format="json")


def test_the_node_shows_each_gpu_as_the_latest_heartbeat_said(api):
    _, secret = join_token_create()
    credential = enrol(secret, "gpu-1", protocol=1).json()["credential"]
    assert (
        _beat(credential, Heartbeat(jobs=(), protocol=1, gpus=(H200,)).to_dict()).status_code == 200
    )
    (node,) = api.get("/api/v1/nodes/").json()
    assert node["gpus"] == [H200.to_dict()]

    cooler = GpuStat(uuid=H200.uuid, name=H200.name, memory_total_mib=143771.0, temperature_c=40.0)
    _beat(credential, Heartbeat(jobs=(), protocol=1, gpus=(cooler,)).to_dict())
    (node,) = api.get("/api/v1/nodes/").json()
    assert node["gpus"][0]["temperature_c"] == 40.0 and node["gpus"][0]["job"] is None

    # A heartbeat that does not say (the agent's credential check) keeps them.
    _beat(credential, Heartbeat(protocol=1).to_dict())
    (node,) = api.get("/api/v1/nodes/").json()
    assert node["gpus"][0]["uuid"] == H200.uuid


def test_a_node_without_gpus_lists_none(api):
    _, secret = join_token_create()
    credential = enrol(secret, "cpu-1", protocol=1).json()["credential"]
    _beat(credential, Heartbeat(jobs=(), protocol=1).to_dict())
    (node,) = api.get("/api/v1/nodes/").json()
    assert node["gpus"] == []


def test_a_gpu_entry_without_its_uuid_is_refused_naming_the_field():
    _, secret = join_token_create()
    credential = enrol(secret, "gpu-1", protocol=1).json()["credential"]
    refused = _beat(credential, {"protocol": 1, "gpus": [{"name": "NVIDIA H200"}]})
    assert refused.status_code == 400
    assert "uuid" in str(refused.json())
