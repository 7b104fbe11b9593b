"""Who may open /ws/jobs/{id}/, through the real ASGI application (its middleware
included): an API token offered as the subprotocol bearer.<token> (no cookie, no Origin,
never in the URL), or a browser's session cookie from this site's own Origin; every
refusal is a close with a documented code and a reason, not a bare HTTP 403."""

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from controlplane.accounts.services import token_create, token_revoke
from controlplane.asgi import application
from controlplane.jobs.services.jobs import job_create

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def job(user):
    return job_create(
        owner=user,
        name="j",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 8, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
    )


def _open(path, *, subprotocols=None, headers=None):
    async def scenario():
        c = WebsocketCommunicator(
            application, path, headers=headers or [], subprotocols=subprotocols
        )
        connected, subprotocol = await c.connect(timeout=10)
        first = await c.receive_output(timeout=10)
        await c.disconnect()
        return connected, subprotocol, first

    return async_to_sync(scenario)()


def test_an_api_token_offered_as_a_subprotocol_opens_the_stream(user, job):
    _, secret = token_create(user=user, name="cli")
    connected, subprotocol, first = _open(
        f"/ws/jobs/{job.id}/?after=0", subprotocols=["adaptrain.v1", f"bearer.{secret}"]
    )
    assert connected and subprotocol == "adaptrain.v1"  # the token is never echoed
    assert first["type"] == "websocket.send" and '"created"' in first["text"]


@pytest.mark.parametrize("revoked", [False, True])
def test_a_bad_token_is_closed_4401_with_the_reason(user, job, revoked):
    if revoked:
        token, secret = token_create(user=user, name="old")
        token_revoke(user=user, token_id=token.id)
    else:
        secret = "tok_not-a-token"
    _, _, first = _open(f"/ws/jobs/{job.id}/", subprotocols=["adaptrain.v1", f"bearer.{secret}"])
    assert first["type"] == "websocket.close" and first["code"] == 4401
    assert ("was revoked" if revoked else "Unknown API token") in first["reason"]


def test_no_credentials_is_closed_4401_saying_how_to_authenticate(job):
    _, _, first = _open(f"/ws/jobs/{job.id}/", headers=[(b"origin", b"http://localhost")])
    assert first["code"] == 4401 and "bearer.<token>" in first["reason"]


def _session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


def test_a_session_cookie_works_from_this_sites_origin_only(user, job):
    cookie = sync_to_async(_session_cookie)
    cookie = async_to_sync(cookie)(user)
    connected, _, first = _open(
        f"/ws/jobs/{job.id}/?after=0",
        headers=[(b"origin", b"http://localhost"), (b"cookie", cookie)],
    )
    assert connected and first["type"] == "websocket.send"
    # The same cookie ridden by a page elsewhere (cross-site WebSocket hijacking).
    _, _, first = _open(
        f"/ws/jobs/{job.id}/", headers=[(b"origin", b"https://evil.example"), (b"cookie", cookie)]
    )
    assert first["code"] == 4403 and "Origin" in first["reason"]


def test_someone_elses_or_a_missing_job_is_closed_4404(user, job):
    other = get_user_model().objects.create_user("mallory", password="x")
    _, secret = token_create(user=other, name="cli")
    for job_id in (job.id, job.id + 1000):
        _, _, first = _open(f"/ws/jobs/{job_id}/", subprotocols=[f"bearer.{secret}"])
        assert first["code"] == 4404 and f"No job {job_id}" in first["reason"]
