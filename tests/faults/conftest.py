"""The control-plane fixtures (an enrolled node's REST client, a job placed on it) for the
fault tests that drive the services directly."""

from tests.controlplane.conftest import join_token, node_client, placed_job  # noqa: F401
