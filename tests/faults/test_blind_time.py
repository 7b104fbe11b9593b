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


def test_the_liveness_task_counts_a_whole_outage_while_a_nodes_silence_spans_it(
    settings, monkeypatch
):
    # The 30 s outage of tests/faults/test_database_outage.py, 10 s heartbeat timeout: the
    # gap beyond two schedules counted only at the first check; the node became unreachable.
    from controlplane.jobs import tasks

    settings.AGENT_HEARTBEAT_TIMEOUT_S, settings.NODE_LOST_GRACE_S = 10, 120
    node, _ = node_enrol(
        join_token=join_token_create(label="t")[1],
        name="n1",
        address="127.0.0.1",
        slots=1,
        labels={},
    )
    clock = [1000.0]
    monkeypatch.setattr(tasks.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(tasks, "_last_outage", None)
    monkeypatch.setattr(tasks, "_last_mark_lost_ok", clock[0] - 40)  # 40 s blind

    def heartbeat_age(seconds: float) -> None:
        Node.objects.filter(id=node.id).update(
            last_heartbeat=timezone.now() - timedelta(seconds=seconds)
        )

    heartbeat_age(38)  # from just before the outage
    tasks.mark_lost_nodes()
    assert Node.objects.get(id=node.id).status == Node.Status.ONLINE
    clock[0] += 10  # next check: no heartbeat yet (the agent waits out a Retry-After): 6 s
    heartbeat_age(46)
    tasks.mark_lost_nodes()
    assert Node.objects.get(id=node.id).status == Node.Status.ONLINE
    clock[0] += 10  # still silent 10 s after the outage: that silence is the node's own
    heartbeat_age(56)
    tasks.mark_lost_nodes()
    assert Node.objects.get(id=node.id).status == Node.Status.UNREACHABLE
