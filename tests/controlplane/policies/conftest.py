"""Fixtures for policy tests: an enrolled node."""

import pytest

from controlplane.jobs.services.nodes import join_token_create, node_enrol


@pytest.fixture
def node():
    _, token = join_token_create()
    node, _ = node_enrol(join_token=token, name="n1", address="127.0.0.1", slots=4, labels={})
    return node
