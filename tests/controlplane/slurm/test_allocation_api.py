"""Slurm allocations over REST, with sbatch/squeue/scancel played by scripts in a
directory of the test's (SLURM_BIN_DIR): Slurm itself is outside the control plane
(tests/e2e/test_slurm_allocations.py runs a real one)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from controlplane.accounts.services import token_create
from controlplane.jobs.models import JoinToken
from controlplane.slurm import services
from controlplane.slurm.models import Allocation

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_api(django_user_model):
    admin = django_user_model.objects.create_user(username="root", password="pw", is_staff=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_create(user=admin, name='t')[1]}")
    return client


@pytest.fixture
def slurm_bin(tmp_path, settings):
    """Stand-in Slurm client commands: sbatch records its stdin and environment and answers
    a job id; squeue lists the jobs in ``queue``; scancel records its arguments."""
    (tmp_path / "queue").write_text("")
    for name, body in {
        "sbatch": f'cat > {tmp_path}/script; env > {tmp_path}/env; echo "$@" > {tmp_path}/argv; echo 4242',
        "squeue": f"cat {tmp_path}/queue",
        "scancel": f'echo "$@" > {tmp_path}/scancel',
    }.items():
        path = tmp_path / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    settings.SLURM_ENABLED = True
    settings.SLURM_BIN_DIR = str(tmp_path)
    settings.SLURM_AGENT_ENV = "AGENT_SLOTS=8"
    return tmp_path


def test_slurm_up_mints_a_join_token_for_the_allocation_and_submits_it(staff_api, slurm_bin):
    r = staff_api.post(
        "/api/v1/slurm/allocations/",
        {"nodes": 2, "partition": "gpu", "gres": "gpu:4", "time_limit": "8:00:00"},
        format="json",
    )
    assert r.status_code == 201, r.json()
    body = r.json()
    assert body["slurm_job_id"] == "4242" and body["status"] == "pending"
    token = JoinToken.objects.get(id=Allocation.objects.get(id=body["id"]).join_token_id)
    assert token.uses_allowed == 2 and token.label == f"slurm allocation {body['id']}"
    env = dict(
        line.split("=", 1) for line in (slurm_bin / "env").read_text().splitlines() if "=" in line
    )
    assert env["AGENT_JOIN_TOKEN"].startswith(token.prefix) and env["AGENT_SLOTS"] == "8"
    assert env["ADAPTRAIN_SLURM_ALLOCATION"] == str(body["id"])
    argv = (slurm_bin / "argv").read_text()
    assert "--nodes=2" in argv and "--gres=gpu:4" in argv and env["AGENT_JOIN_TOKEN"] not in argv
    assert "srun --ntasks-per-node=1" in (slurm_bin / "script").read_text()

    # squeue: running, then gone → ended, and its join token revoked.
    (slurm_bin / "queue").write_text("4242 RUNNING\n")
    assert services.allocations_sync() == []
    assert Allocation.objects.get(id=body["id"]).status == "running"
    (slurm_bin / "queue").write_text("")
    assert services.allocations_sync() == [body["id"]]
    token.refresh_from_db()
    assert Allocation.objects.get(id=body["id"]).status == "ended" and token.revoked_at


def test_slurm_down_cancels_the_batch_job(staff_api, slurm_bin):
    allocation_id = staff_api.post(
        "/api/v1/slurm/allocations/", {"nodes": 1}, format="json"
    ).json()["id"]
    r = staff_api.post(f"/api/v1/slurm/allocations/{allocation_id}/release/")
    assert r.status_code == 200 and r.json()["status"] == "ending"
    assert (slurm_bin / "scancel").read_text().strip() == "4242"
    (slurm_bin / "queue").write_text("")
    services.allocations_sync()
    r = staff_api.post(f"/api/v1/slurm/allocations/{allocation_id}/release/")
    assert r.status_code == 409 and "ended" in r.json()["message"]


def test_a_refused_submission_revokes_its_token_and_says_why(staff_api, slurm_bin):
    (slurm_bin / "sbatch").write_text(
        "#!/bin/sh\necho 'sbatch: error: invalid partition specified: x' >&2; exit 1\n"
    )
    r = staff_api.post("/api/v1/slurm/allocations/", {"nodes": 1, "partition": "x"}, format="json")
    assert r.status_code == 502 and "invalid partition" in r.json()["message"]
    allocation = Allocation.objects.get()
    assert allocation.status == "failed" and JoinToken.objects.get().revoked_at is not None


def test_without_slurm_enabled_or_staff_it_is_refused(staff_api, settings, user):
    settings.SLURM_ENABLED = False
    r = staff_api.post("/api/v1/slurm/allocations/", {"nodes": 1}, format="json")
    assert r.status_code == 409 and "SLURM_ENABLED" in r.json()["message"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_create(user=user, name='u')[1]}")
    assert client.get("/api/v1/slurm/allocations/").status_code == 403
