"""Fixtures shared by the control-plane tests."""

from __future__ import annotations

import pytest

from controlplane.jobs import services


@pytest.fixture
def nodes():
    token = services.join_token_create(label="test")
    return [
        services.node_enrol(
            join_token=token, name=f"n{i}", address=f"10.0.0.{i}", slots=2, labels={}
        )[0]
        for i in (1, 2)
    ]
