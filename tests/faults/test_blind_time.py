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


def _node(name: str = "n1") -> Node:
    return node_enrol(
        join_token=join_token_create(label="t")[1],
        name=name,
        address="127.0.0.1",
        slots=1,
        labels={},
    )[0]


def _heartbeat_age(node: Node, seconds: float) -> None:
    Node.objects.filter(id=node.id).update(
        last_heartbeat=timezone.now() - timedelta(seconds=seconds)
    )


def test_blind_time_spares_only_nodes_last_heard_before_the_outage_ended():
    before, after = _node("before"), _node("after")
    # A 40 s outage that ended 12 s ago; timeout 10 s.
    ended = timezone.now() - timedelta(seconds=12)
    _heartbeat_age(before, 55)  # 55 s silent, 40 of them blind: 15 s of its own
    _heartbeat_age(after, 11)  # heard after the outage, then silent 11 s: its own
    nodes_mark_lost(timeout_s=10, grace_s=120, blind_s=40, blind_until=ended)
    assert Node.objects.get(id=after.id).status == Node.Status.UNREACHABLE
    assert Node.objects.get(id=before.id).status == Node.Status.UNREACHABLE
    fresh = _node("fresh")
    _heartbeat_age(fresh, 45)  # 45 s silent, 40 blind: 5 s of its own, stays online
    nodes_mark_lost(timeout_s=10, grace_s=120, blind_s=40, blind_until=ended)
    assert Node.objects.get(id=fresh.id).status == Node.Status.ONLINE


@pytest.fixture
def liveness_task(settings, monkeypatch):
    """tasks.mark_lost_nodes on a clock of its own, with no history, and a switch that
    makes its database unreachable."""
    from django.db import OperationalError

    from controlplane.jobs import tasks

    settings.AGENT_HEARTBEAT_TIMEOUT_S, settings.NODE_LOST_GRACE_S = 10, 120
    clock = [1000.0]
    monkeypatch.setattr(tasks.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(tasks, "_last_outage", None)
    monkeypatch.setattr(tasks, "_db_down_since", None)
    monkeypatch.setattr(tasks, "_last_mark_lost_ok", None)
    real, down = tasks.nodes.nodes_mark_lost, [False]

    def mark_lost(**kwargs):
        if down[0]:
            raise OperationalError("connection refused")
        return real(**kwargs)

    monkeypatch.setattr(tasks.nodes, "nodes_mark_lost", mark_lost)

    class Task:
        def run(self, *, after_s: float = 10.0, db_down: bool = False) -> None:
            clock[0] += after_s
            down[0] = db_down
            tasks.mark_lost_nodes()

    return Task()


def test_the_liveness_task_counts_a_database_outage_while_a_nodes_silence_spans_it(
    liveness_task,
):
    # The 30 s outage of tests/faults/test_database_outage.py, 10 s heartbeat timeout.
    node = _node()
    _heartbeat_age(node, 2)
    liveness_task.run(after_s=0)
    for _ in range(3):  # the database is down for 30 s: each check fails and says so
        liveness_task.run(db_down=True)
    _heartbeat_age(node, 38)  # the last heartbeat came just before the outage
    liveness_task.run()  # back: 40 s since the last good check are blind
    assert Node.objects.get(id=node.id).status == Node.Status.ONLINE
    _heartbeat_age(node, 46)  # no heartbeat yet (the agent waits out a Retry-After): 6 s
    liveness_task.run(after_s=8)
    assert Node.objects.get(id=node.id).status == Node.Status.ONLINE
    _heartbeat_age(node, 56)  # still silent 16 s after the outage: that silence is its own
    liveness_task.run()
    assert Node.objects.get(id=node.id).status == Node.Status.UNREACHABLE


def test_a_late_check_is_no_outage_a_dead_node_is_unreachable_after_the_timeout(liveness_task):
    # Celery busy or the machine loaded: a check 40 s after the last. The database was up
    # throughout (the web server recorded heartbeats), so nothing was blind: a node silent
    # 12 s with a 10 s timeout is unreachable at once (it once waited out the gap too).
    node = _node()
    liveness_task.run(after_s=0)
    _heartbeat_age(node, 12)
    liveness_task.run(after_s=40)
    assert Node.objects.get(id=node.id).status == Node.Status.UNREACHABLE


def test_a_fresh_worker_process_grants_one_full_timeout(liveness_task):
    node = _node()
    _heartbeat_age(node, 15)  # over the timeout, but this process cannot know what came before
    liveness_task.run(after_s=0)
    assert Node.objects.get(id=node.id).status == Node.Status.ONLINE
    _heartbeat_age(node, 25)
    liveness_task.run()
    assert Node.objects.get(id=node.id).status == Node.Status.UNREACHABLE
