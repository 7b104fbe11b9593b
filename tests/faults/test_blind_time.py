"""Time the control plane could not see (its database was down) never counts as a node's
silence: the liveness check extends its cutoff by that blind time."""

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.jobs.models import Node
from controlplane.jobs.services.nodes import join_token_create, node_enrol, nodes_mark_lost

pytestmark = pytest.mark.django_db


def test_a_node_silent_only_during_the_control_planes_outage_stays_online():
    node, _ = node_enrol(
        join_token=join_token_create(label="t")[1],
        name="n1",
        address="127.0.0.1",
        slots=1,
        labels={},
    )
    # Last heartbeat 45 s ago, 40 of which the database was down: 5 s of real silence.
    Node.objects.filter(id=node.id).update(last_heartbeat=timezone.now() - timedelta(seconds=45))
    assert nodes_mark_lost(timeout_s=30, blind_s=40) == []
    assert Node.objects.get(id=node.id).status == Node.Status.ONLINE
    # Without the blind time the same silence is over the timeout.
    assert nodes_mark_lost(timeout_s=30) == [node.id]
    assert Node.objects.get(id=node.id).status == Node.Status.LOST
