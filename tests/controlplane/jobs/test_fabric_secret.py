"""The per-run fabric secret (issue 18): the control plane adds it to a ``start`` frame
(and a grow's ``join``) when pushing to the job's agent, never to the stored command,
so the REST API, the events and the job page never carry it; each run has its own."""

from __future__ import annotations

import re

import pytest

from agent.protocol.control import CommandFrame, StartPayload
from controlplane.jobs import outbox
from controlplane.jobs.models import Command, Run

pytestmark = pytest.mark.django_db


def test_the_start_frame_carries_the_runs_secret_and_the_row_does_not(placed_job):
    start = Command.objects.get(job=placed_job, type=Command.Type.START)
    assert "fabric_secret" not in start.payload
    frame = CommandFrame.from_dict(outbox.command_frame(start))
    payload = frame.start_payload()
    assert isinstance(payload, StartPayload)
    assert re.fullmatch(r"[0-9a-f]{64}", payload.fabric_secret or "")
    assert payload.fabric_secret == outbox.fabric_secret(placed_job.id, start.run_id)
    assert payload.fabric_secret not in repr(payload)  # never in a log line by accident


def test_each_run_and_each_job_has_its_own_secret(placed_job):
    run = Run.objects.get(id=placed_job.current_run_id)
    secrets = {
        outbox.fabric_secret(placed_job.id, run.id),
        outbox.fabric_secret(placed_job.id, run.id + 1),
        outbox.fabric_secret(placed_job.id + 1, run.id),
    }
    assert len(secrets) == 3


def test_the_secret_is_in_no_rest_answer_or_page_about_the_job(api, client, user, placed_job):
    start = Command.objects.get(job=placed_job, type=Command.Type.START)
    secret = outbox.fabric_secret(placed_job.id, start.run_id)
    commands = api.get(f"/api/v1/jobs/{placed_job.id}/commands/").json()
    commands = commands.get("results", commands) if isinstance(commands, dict) else commands
    assert [c["payload"]["ranks"] for c in commands if c["action"] == "start"]  # shown, less it
    for path in ("", "commands/", "events/", "runs/", "workers/"):
        response = api.get(f"/api/v1/jobs/{placed_job.id}/{path}")
        if response.status_code == 404 and path:
            continue  # no such view
        assert response.status_code == 200, (path, response.content)
        assert secret not in response.content.decode(), path
    client.force_login(user)
    page = client.get(f"/jobs/{placed_job.id}/")
    assert page.status_code == 200
    assert secret not in page.content.decode()
