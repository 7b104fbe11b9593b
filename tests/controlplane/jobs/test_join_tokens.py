"""Join tokens: staff create them with a use limit and an expiry (the secret shown once,
with the setup of the node to add), list and revoke them; an enrolment uses a token
once, atomically, and a token that cannot be used says exactly why."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from controlplane.accounts import credentials
from controlplane.jobs.models import JoinToken, Node
from controlplane.jobs.services.nodes import join_token_create
from tests.controlplane.jobs.conftest import as_node, enrol

pytestmark = pytest.mark.django_db


def test_staff_create_a_token_whose_secret_is_shown_once_with_the_node_setup(staff_api):
    response = staff_api.post(
        "/api/v1/join-tokens/",
        {"label": "rack 4", "uses": 3, "expires_in_hours": 2, "kind": "gpu", "node_name": "gpu-1"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    secret = body["token"]
    row = JoinToken.objects.get(id=body["id"])
    assert row.token_hash == credentials.digest(secret) and secret not in row.token_hash
    assert body["prefix"] == secret[:12] and body["created_by"] == "root"
    assert (body["uses_allowed"], body["uses_left"], body["state"]) == (3, 3, "active")
    left = row.expires_at - timezone.now()
    assert timedelta(hours=1, minutes=59) < left <= timedelta(hours=2)
    setup = body["setup"]
    assert "pip install 'adaptrain[node,gpu]'" in setup["install"]
    assert "AGENT_SERVER=http://testserver\n" in setup["env_file"]
    assert f"AGENT_JOIN_TOKEN={secret}\n" in setup["env_file"]
    assert "AGENT_NAME=gpu-1\n" in setup["env_file"]
    assert "KillMode=process" in setup["unit"]
    assert "systemctl enable --now adaptrain-agent" in setup["start"]

    listed = staff_api.get("/api/v1/join-tokens/").json()
    assert [t["label"] for t in listed] == ["rack 4"]
    assert "token" not in listed[0] and secret not in str(listed)


def test_a_token_is_good_for_one_enrolment_and_a_day_by_default(staff_api):
    body = staff_api.post("/api/v1/join-tokens/", {}, format="json").json()
    assert (body["uses_allowed"], body["setup"]["kind"]) == (1, "cpu")
    left = JoinToken.objects.get(id=body["id"]).expires_at - timezone.now()
    assert timedelta(hours=23, minutes=59) < left <= timedelta(hours=24)
    assert "pip install 'adaptrain[node,cpu]'" in body["setup"]["install"]
    assert "# AGENT_NAME=" in body["setup"]["env_file"]  # unset: the host name


def test_the_setup_names_the_configured_control_plane_url(staff_api, settings):
    settings.CONTROL_PLANE_URL = "https://train.example.org"
    body = staff_api.post("/api/v1/join-tokens/", {}, format="json").json()
    assert "AGENT_SERVER=https://train.example.org\n" in body["setup"]["env_file"]


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"uses": 0}, "uses"),
        ({"uses": 1001}, "uses"),
        ({"expires_in_hours": 0}, "expires_in_hours"),
        ({"kind": "tpu"}, "kind"),
        ({"node_name": "-bad name"}, "node_name"),
        ({"label": "x" * 101}, "label"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(staff_api, payload, field):
    response = staff_api.post("/api/v1/join-tokens/", payload, format="json")
    assert response.status_code == 400
    assert response.json()["message"].startswith(f"{field}:")
    assert not JoinToken.objects.exists()


def test_only_staff_manage_join_tokens(api):
    token, _ = join_token_create()
    assert api.get("/api/v1/join-tokens/").status_code == 403
    response = api.post("/api/v1/join-tokens/", {}, format="json")
    assert response.status_code == 403 and "staff" in response.json()["message"]
    assert api.delete(f"/api/v1/join-tokens/{token.id}/").status_code == 403
    assert JoinToken.objects.get(id=token.id).revoked_at is None


def test_a_revoked_token_enrols_no_one_and_its_nodes_keep_their_credentials(staff_api):
    token, secret = join_token_create(uses=2)
    credential = enrol(secret, "n1").json()["credential"]
    revoked = staff_api.delete(f"/api/v1/join-tokens/{token.id}/")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert revoked.json()["nodes"] == ["n1"]
    refused = enrol(secret, "n2")
    assert refused.status_code == 401
    assert refused.json()["code"] == "join_token_revoked"
    assert f"{token.prefix}… was revoked" in refused.json()["message"]
    assert (
        as_node(credential).post("/api/v1/agent/heartbeat/", {}, format="json").status_code == 200
    )
    assert staff_api.delete("/api/v1/join-tokens/999999/").status_code == 404


def test_a_token_that_cannot_be_used_says_why(staff_api):
    unknown = enrol("join_nope", "n1")
    assert unknown.status_code == 401 and unknown.json()["code"] == "join_token_unknown"
    assert "unknown" in unknown.json()["message"]

    token, secret = join_token_create()
    assert enrol(secret, "n1").status_code == 201
    used_up = enrol(secret, "n2")
    assert used_up.status_code == 401 and used_up.json()["code"] == "join_token_used_up"
    assert "good for 1 enrolment(s)" in used_up.json()["message"]

    token, secret = join_token_create()
    JoinToken.objects.filter(id=token.id).update(expires_at=timezone.now() - timedelta(minutes=1))
    expired = enrol(secret, "n3")
    assert expired.status_code == 401 and expired.json()["code"] == "join_token_expired"
    assert "expired on" in expired.json()["message"]
    assert JoinToken.objects.get(id=token.id).uses_left == 1  # nothing used
    assert list(Node.objects.values_list("name", flat=True)) == ["n1"]
    states = {t["prefix"]: t["state"] for t in staff_api.get("/api/v1/join-tokens/").json()}
    assert sorted(states.values()) == ["expired", "used_up"]


@pytest.mark.django_db(transaction=True)
def test_two_agents_racing_for_the_last_use_cannot_both_enrol():
    """The use is taken by one conditional UPDATE: of many enrolments at once with a
    token good for two, exactly two succeed."""
    _, secret = join_token_create(uses=2)
    start = threading.Barrier(6)
    statuses: list[int] = []

    def agent(i: int) -> None:
        try:
            start.wait()
            statuses.append(enrol(secret, f"racer-{i}").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201, 201, 401, 401, 401, 401]
    assert Node.objects.count() == 2 and JoinToken.objects.get().uses_left == 0


def test_the_command_creates_a_token_with_uses_and_an_expiry(capsys):
    call_command("create_join_token", "--label", "cli", "--uses", "3", "--expires-in", "30m")
    secret = capsys.readouterr().out.strip()
    token = JoinToken.objects.get(token_hash=credentials.digest(secret))
    assert (token.label, token.uses_allowed, token.uses_left) == ("cli", 3, 3)
    left = token.expires_at - timezone.now()
    assert timedelta(minutes=29) < left <= timedelta(minutes=30)
    call_command("create_join_token")
    default = JoinToken.objects.exclude(id=token.id).get()
    assert default.uses_allowed == 1
    assert timedelta(hours=23) < default.expires_at - timezone.now() <= timedelta(hours=24)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--uses", "0"], "--uses 0"),
        (["--expires-in", "soon"], "--expires-in 'soon'"),
        (["--expires-in", "0h"], "--expires-in '0h'"),
    ],
)
def test_the_command_refuses_bad_options(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_join_token", *args)
    assert not JoinToken.objects.exists()


def test_an_admin_replaces_a_node_by_name_with_manage_py(capsys, caplog):
    first = enrol(join_token_create(label="a")[1], "gpu-1")
    assert first.status_code == 201, first.content
    # Without the admin, the name is not taken over.
    assert enrol(join_token_create(label="b")[1], "gpu-1").status_code == 409
    call_command("revoke_node", "gpu-1")
    assert "node gpu-1 revoked" in capsys.readouterr().out
    assert "revoked by manage.py" in caplog.text
    assert (
        as_node(first.json()["credential"])
        .post("/api/v1/agent/heartbeat/", {}, format="json")
        .status_code
        == 401
    )
    second = enrol(join_token_create(label="c")[1], "gpu-1")
    assert second.status_code == 201, second.content
    assert Node.objects.enrolled().get(name="gpu-1").status == Node.Status.ONLINE
    with pytest.raises(CommandError, match="No enrolled node is named 'nope'"):
        call_command("revoke_node", "nope")
