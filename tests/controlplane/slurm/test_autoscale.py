"""Provisioning through Slurm (controlplane.slurm.autoscale) on the real control plane,
with sbatch/squeue/scancel played by scripts (Slurm lies outside the control plane; the
e2e test runs a real one): nodes are requested when the goodput allocator would use them,
within the global and per-user limits, one request at a time and after a cooldown; idle
autoscaled nodes are released; every request and release is an event on its jobs; nothing
happens unless switched on."""

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.jobs.models import Event, Worker
from controlplane.jobs.services.nodes import join_token_create, node_enrol
from controlplane.slurm import autoscale, services
from controlplane.slurm.models import Allocation
from tests.controlplane.jobs.agent_steps import new_job, start
from tests.controlplane.policies.test_goodput_provisioning import POOR, SCALABLE, report
from tests.controlplane.slurm.test_allocation_api import slurm_bin  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db


@pytest.fixture
def autoscaling(slurm_bin, settings):  # noqa: F811
    settings.SLURM_AUTOSCALE = True
    settings.CONTROL_PLANE_URL = "http://cp.example:8000"
    settings.SLURM_AUTOSCALE_MAX_NODES = 4
    settings.SLURM_AUTOSCALE_MAX_NODES_PER_USER = 2
    settings.SLURM_AUTOSCALE_COOLDOWN_S = 300.0
    settings.SLURM_AUTOSCALE_IDLE_S = 60.0
    settings.SLURM_AUTOSCALE_PARTITION = "gpu"
    return slurm_bin


def enrol(name, slots, labels=None):
    _, token = join_token_create(label="test")
    return node_enrol(join_token=token, name=name, address="10.0.0.9", slots=slots,
                      labels=labels or {})[0]  # fmt: skip


def two_scalable_jobs_filling_the_fleet(user):
    enrol("big", 8)
    jobs = [start(new_job(user, initial=4, low=1, high=16)) for _ in range(2)]
    for job in jobs:
        report(job, SCALABLE, gns=4000.0)
    return jobs


def test_nodes_are_requested_for_jobs_that_would_use_them_within_the_limits(user, autoscaling):
    jobs = two_scalable_jobs_filling_the_fleet(user)
    autoscale.autoscale()
    alloc = Allocation.objects.get()
    assert alloc.autoscale and alloc.created_by == user
    assert alloc.nodes == 2  # the per-user limit, below what the allocator would use
    assert sorted(alloc.requested_for) == sorted(j.id for j in jobs)
    assert alloc.partition == "gpu" and alloc.slurm_job_id == "4242"
    assert "--nodes=2" in (autoscaling / "argv").read_text()
    for job in jobs:
        event = Event.objects.get(job=job, kind="decision", actor="provisioning:slurm")
        assert f"requested Slurm allocation {alloc.id} (2 node(s))" in event.message
        assert event.data["speedup_mean_with"] > event.data["speedup_mean_now"]

    # One request at a time: the first is still queued.
    autoscale.autoscale()
    assert Allocation.objects.count() == 1
    # Running now, but within the cooldown: still one.
    (autoscaling / "queue").write_text("4242 RUNNING\n")
    services.allocations_sync()
    autoscale.autoscale()
    assert Allocation.objects.count() == 1
    # Past the cooldown the owner is at their limit (2 nodes): still one.
    Allocation.objects.update(created_at=timezone.now() - timedelta(hours=1))
    autoscale.autoscale()
    assert Allocation.objects.count() == 1


def test_jobs_that_would_not_use_more_nodes_get_none(user, autoscaling):
    enrol("big", 8)
    for _ in range(2):
        report(start(new_job(user, initial=4, low=1, high=16)), POOR, gns=10.0)
    autoscale.autoscale()
    assert not Allocation.objects.exists()


def test_idle_autoscaled_nodes_are_released_and_the_jobs_told(user, autoscaling):
    jobs = two_scalable_jobs_filling_the_fleet(user)
    autoscale.autoscale()
    alloc = Allocation.objects.get()
    (autoscaling / "queue").write_text("4242 RUNNING\n")
    services.allocations_sync()
    node = enrol("slurm-4242-c1", 8, {"slurm_allocation": str(alloc.id)})
    # A worker on its node keeps it, however long ago the allocation started.
    Allocation.objects.update(created_at=timezone.now() - timedelta(minutes=10))
    worker = Worker.objects.filter(job=jobs[0]).first()
    Worker.objects.filter(id=worker.id).update(node=node)
    assert autoscale.release_idle() == []
    # The worker left: idle from the last round that saw it, so kept for 60 s more …
    Worker.objects.filter(id=worker.id).update(state=Worker.State.LEFT)
    assert autoscale.release_idle() == []
    # … and released through scancel once SLURM_AUTOSCALE_IDLE_S has passed.
    Allocation.objects.update(busy_at=timezone.now() - timedelta(seconds=61))
    assert autoscale.release_idle() == [alloc.id]
    assert (autoscaling / "scancel").read_text().strip() == "4242"
    assert Allocation.objects.get().status == "ending"
    for job in jobs:
        assert Event.objects.filter(
            job=job,
            actor="provisioning:slurm",
            message__startswith=f"released Slurm allocation {alloc.id}",
        ).exists()


def test_a_recently_idle_node_is_kept(user, autoscaling):
    two_scalable_jobs_filling_the_fleet(user)
    autoscale.autoscale()
    alloc = Allocation.objects.get()
    (autoscaling / "queue").write_text("4242 RUNNING\n")
    services.allocations_sync()
    enrol("slurm-4242-c1", 8, {"slurm_allocation": str(alloc.id)})
    assert autoscale.release_idle() == []  # started just now


def test_nothing_happens_unless_switched_on(user, autoscaling, settings):
    two_scalable_jobs_filling_the_fleet(user)
    settings.SLURM_AUTOSCALE = False
    autoscale.autoscale()
    assert not Allocation.objects.exists()
    settings.SLURM_AUTOSCALE = True
    settings.CONTROL_PLANE_URL = ""  # the agents would not know where to enrol
    autoscale.autoscale()
    assert not Allocation.objects.exists()
