"""Where a job's code may come from is each node owner's choice (AGENT_CODE): agents say
which kinds of code they run at enrolment and with every heartbeat, the node keeps it,
placement and grows only use nodes that run the job's kind, and a job no enrolled node
runs the code of waits with a reason that says what to set, never silently."""

from __future__ import annotations

import pytest

from controlplane.bundles.models import Bundle
from controlplane.jobs.models import Job, Node
from controlplane.jobs.services.nodes import join_token_create
from controlplane.jobs.services.scheduling import job_place
from tests.controlplane.jobs.agent_steps import run_placed
from tests.controlplane.jobs.conftest import as_node, enrol

pytestmark = pytest.mark.django_db

ALL = ["bundles", "installed", "examples"]


def _job(user, entrypoint: str = "train:main", *, bundle: str = "", workers: int = 1) -> Job:
    """A job of ``user`` (with code bundle ``bundle``, stored as a row: placement reads
    only its digest)."""
    if bundle:
        Bundle.objects.get_or_create(
            digest=bundle, defaults={"size": 1, "unpacked_size": 1, "files": 1}
        )
    return Job.objects.create(
        owner=user,
        name="own code",
        entrypoint=entrypoint,
        bundle_digest=bundle,
        hyperparameters={"batch_size": 32, "lr": 0.1},
        workers_initial=workers,
        workers_min=workers,
        workers_max=workers,
        batch_size=32,
        learning_rate=0.1,
    )


def test_the_node_keeps_the_kinds_of_code_its_agent_says_it_runs(api):
    _, secret = join_token_create(uses=2)
    credential = enrol(secret, "n1", code=["examples", "installed"]).json()["credential"]
    (node,) = api.get("/api/v1/nodes/").json()
    assert node["code_kinds"] == ["installed", "examples"]  # in canonical order
    beat = as_node(credential).post("/api/v1/agent/heartbeat/", {"code": ALL}, format="json")
    assert beat.status_code == 200
    assert api.get("/api/v1/nodes/").json()[0]["code_kinds"] == ALL
    # A heartbeat that does not say keeps what the node runs.
    as_node(credential).post("/api/v1/agent/heartbeat/", {}, format="json")
    assert Node.objects.get(name="n1").code_kinds == ALL
    # An agent from before AGENT_CODE cannot fetch bundles: it runs the rest.
    enrol(secret, "old")
    assert Node.objects.get(name="old").code_kinds == ["installed", "examples"]


def test_an_unknown_kind_of_code_is_refused_naming_the_kinds():
    _, secret = join_token_create()
    reply = enrol(secret, "n1", code=["bundle"])
    assert reply.status_code == 400 and "bundle" in str(reply.json())
    assert not Node.objects.exists()


def test_a_job_goes_only_to_nodes_that_run_its_kind_of_code(user):
    _, secret = join_token_create(uses=2)
    enrol(secret, "strict", code=["installed", "examples"], slots=1)
    enrol(secret, "open", code=ALL, slots=4)
    job = _job(user, bundle="ab" * 32)
    assert job_place(job_id=job.id)
    assert {w.node.name for w in job.workers.all()} == {"open"}
    # Installed code goes to the tighter fit, which runs it.
    installed = _job(user, "mylab.train:main")
    assert job_place(job_id=installed.id)
    assert {w.node.name for w in installed.workers.all()} == {"strict"}


def test_a_job_no_node_runs_the_code_of_waits_saying_what_to_set_then_runs_when_one_does(user):
    _, secret = join_token_create()
    credential = enrol(secret, "strict", code=["installed", "examples"]).json()["credential"]
    job = _job(user, bundle="cd" * 32)
    assert not job_place(job_id=job.id)
    job.refresh_from_db()
    assert job.status == Job.Status.PENDING
    assert "no enrolled node runs code bundles" in job.status_reason
    assert "AGENT_CODE" in job.status_reason
    assert job.events.filter(message__startswith="pending: no enrolled node runs").exists()
    # The node's owner lets it run bundles: its next heartbeat says so, and the job goes there.
    as_node(credential).post("/api/v1/agent/heartbeat/", {"code": ALL}, format="json")
    assert job_place(job_id=job.id)
    job.refresh_from_db()
    assert job.status == Job.Status.SCHEDULING


def test_a_grow_counts_only_the_slots_of_nodes_that_run_the_jobs_code(user, api):
    _, secret = join_token_create(uses=2)
    enrol(secret, "open", code=ALL, slots=1)
    enrol(secret, "strict", code=["installed", "examples"], slots=4)
    job = _job(user, bundle="ef" * 32)
    Job.objects.filter(id=job.id).update(workers_max=3)
    assert job_place(job_id=job.id)
    run_placed(job)
    reply = api.post(
        f"/api/v1/jobs/{job.id}/commands/", {"action": "scale_workers", "value": 2}, format="json"
    )
    assert reply.status_code == 409, reply.json()
    assert "0 free on online nodes (not draining) that run bundles code" in reply.json()["message"]
