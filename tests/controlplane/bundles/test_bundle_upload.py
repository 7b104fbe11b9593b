"""Code bundles over REST: stored once under their sha256 (a resubmission stores nothing),
refused with a clear error when too big, corrupt, unsafe or sent without permission, and
served to an agent only for a job it runs; jobs name a bundle by digest, or bring one in a
multipart form."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest
from django.contrib.auth.models import Permission
from django.core.files.storage import storages
from rest_framework.test import APIClient

from adaptrain.bundle import pack
from controlplane.accounts.services import token_create
from controlplane.bundles.models import Bundle
from controlplane.jobs.models import Job

pytestmark = pytest.mark.django_db

JOB = {
    "name": "own code",
    "entrypoint": "train:main",
    "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 100},
    "workers": {"initial": 1},
}


@pytest.fixture(autouse=True)
def bundle_dir(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "bundles": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "bundles")},
        },
    }
    storages._storages = {}  # the storage handler caches backends: read the setting again
    yield tmp_path / "bundles"
    storages._storages = {}


@pytest.fixture
def coder(user):
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="bundles", codename="submit_bundle")
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_create(user=user, name='t')[1]}")
    return client


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    (root / "train.py").write_text("def main():\n    print('hello')\n")
    (root / "data.bin").write_bytes(b"\0" * 100)
    (root / ".adaptrainignore").write_text("data.bin\n")
    return pack(root)


def upload(client, data: bytes, **query):
    suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
    return client.generic(
        "POST", f"/api/v1/bundles/{suffix}", data, content_type="application/gzip"
    )


def test_an_upload_is_stored_once_under_its_digest(coder, project, bundle_dir):
    first = upload(coder, project.data, digest=project.digest)
    assert first.status_code == 201, first.json()
    assert first.json()["digest"] == project.digest and first.json()["files"] == 2
    again = upload(coder, project.data)
    assert again.status_code == 200 and again.json()["digest"] == project.digest
    assert Bundle.objects.count() == 1
    stored = list(bundle_dir.rglob("*.tar.gz"))
    assert len(stored) == 1 and stored[0].read_bytes() == project.data
    assert coder.get(f"/api/v1/bundles/{project.digest}/").json()["size"] == len(project.data)
    assert coder.get(f"/api/v1/bundles/{'0' * 64}/").status_code == 404


def test_a_multipart_upload_works_like_the_raw_one(coder, project):
    reply = coder.post("/api/v1/bundles/", {"bundle": io.BytesIO(project.data)}, format="multipart")
    assert reply.status_code == 201 and reply.json()["digest"] == project.digest


@pytest.mark.parametrize(
    "data, status, message",
    [
        (b"not gzip at all", 400, "Not a usable code bundle"),
        (gzip.compress(b"not a tar"), 400, "Not a usable code bundle"),
    ],
)
def test_corrupt_archives_are_refused_and_nothing_is_stored(
    coder, data, status, message, bundle_dir
):
    reply = upload(coder, data)
    assert reply.status_code == status and message in reply.json()["message"]
    assert Bundle.objects.count() == 0 and not list(bundle_dir.rglob("*.tar.gz"))


def test_an_archive_escaping_the_job_directory_is_refused(coder):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        item = tarfile.TarInfo("../../etc/cron.d/evil")
        item.size = 1
        tar.addfile(item, io.BytesIO(b"x"))
    reply = upload(coder, gzip.compress(raw.getvalue()))
    assert reply.status_code == 400 and "would land outside" in reply.json()["message"]


def test_a_wrong_digest_and_an_oversized_bundle_are_refused(coder, project, settings):
    reply = upload(coder, project.data, digest="0" * 64)
    assert reply.status_code == 400 and "corrupted or changed on the way" in reply.json()["message"]
    assert upload(coder, project.data, digest="xyz").status_code == 400
    settings.BUNDLE_MAX_BYTES = 100
    reply = upload(coder, project.data)
    assert reply.status_code == 413 and "BUNDLE_MAX_BYTES" in reply.json()["message"]
    assert Bundle.objects.count() == 0


def test_a_user_without_the_permission_is_refused_saying_who_can_grant_it(api, project):
    reply = upload(api, project.data)
    assert reply.status_code == 403
    assert "may not submit code bundles" in reply.json()["message"]
    assert reply.json()["code"] == "forbidden"
    assert APIClient().generic(
        "POST", "/api/v1/bundles/", project.data, content_type="application/gzip"
    ).status_code in (401, 403)


def test_a_job_names_its_bundle_by_digest_or_brings_it_in_a_form(coder, project):
    reply = coder.post("/api/v1/jobs/", {**JOB, "bundle": project.digest}, format="json")
    assert reply.status_code == 404 and project.digest in reply.json()["message"]  # not uploaded
    upload(coder, project.data)
    reply = coder.post("/api/v1/jobs/", {**JOB, "bundle": project.digest}, format="json")
    assert reply.status_code == 201, reply.json()
    assert reply.json()["bundle"] == project.digest and reply.json()["entrypoint"] == "train:main"
    form = coder.post(
        "/api/v1/jobs/",
        {"job": json.dumps(JOB), "bundle": io.BytesIO(project.data)},
        format="multipart",
    )
    assert form.status_code == 201, form.json()
    assert form.json()["bundle"] == project.digest and Bundle.objects.count() == 1


@pytest.mark.parametrize("entrypoint", ["train.py", "-m train", "train:", "a..b", "1train", ""])
def test_an_entrypoint_that_is_not_a_module_is_a_400_saying_what_to_write(coder, entrypoint):
    reply = coder.post("/api/v1/jobs/", {**JOB, "entrypoint": entrypoint}, format="json")
    assert reply.status_code == 400
    if entrypoint:
        assert "package.module" in reply.json()["message"], reply.json()


def test_installed_modules_and_examples_need_no_bundle(api):
    for entrypoint in ("examples.digits", "mylab.train", "mylab.train:main"):
        reply = api.post("/api/v1/jobs/", {**JOB, "entrypoint": entrypoint}, format="json")
        assert reply.status_code == 201, reply.json()
    kinds = {j.entrypoint: (j.module, j.code_kind) for j in Job.objects.all()}
    assert kinds == {
        "examples.digits": ("examples.digits.train", "examples"),
        "mylab.train": ("mylab.train", "installed"),
        "mylab.train:main": ("mylab.train:main", "installed"),
    }


def test_an_agent_downloads_a_bundle_only_for_a_job_it_runs(
    coder, project, node_client, other_user
):
    upload(coder, project.data)
    url = f"/api/v1/agent/bundles/{project.digest}/"
    assert node_client.get(url).status_code == 404  # no job of it on the node yet
    job = coder.post("/api/v1/jobs/", {**JOB, "bundle": project.digest}, format="json").json()
    from controlplane.jobs.services.scheduling import job_place

    assert job_place(job_id=job["id"])
    reply = node_client.get(url)
    assert reply.status_code == 200 and reply["Content-Type"] == "application/gzip"
    assert hashlib.sha256(reply.content).hexdigest() == project.digest
    assert APIClient().get(url).status_code in (401, 403)  # never anonymously
