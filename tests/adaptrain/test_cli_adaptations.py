"""``adaptrain jobs adaptations JOB``: a short table of what each change of a job's knobs
did (from GET /api/v1/jobs/{id}/adaptations/ on a live server), and the same as JSON."""

import json

import pytest

from agent.protocol.vocabulary import CODE_KINDS
from controlplane.jobs.models import Command
from controlplane.jobs.services.commands import command_finish, command_issue
from controlplane.jobs.services.nodes import join_token_create, node_enrol
from tests.adaptrain.test_cli import cli  # noqa: F401  (the fixture)
from tests.controlplane.policies.test_adaptations_api import NAMES, _ingest, _running_job, _series

pytestmark = pytest.mark.django_db(transaction=True)


def test_adaptations_table_shows_the_change_and_the_time_saved(cli, user):  # noqa: F811
    _, token = join_token_create(label="test")
    node_enrol(
        join_token=token, name="n1", address="10.0.0.1", slots=2, labels={}, code=list(CODE_KINDS)
    )
    job = _running_job(user)
    _ingest(job, "before", _series(range(4)), NAMES)
    [command] = command_issue(job=job, type="set_batch_size", value=64, issued_by="user:alice")
    command_finish(node=command.node, command_id=command.id, ok=True, step=40)
    _ingest(job, "after", _series(range(4, 8)), NAMES)
    assert Command.objects.get(id=command.id).state == "applied"

    shown = cli("jobs", "adaptations", str(job.id))
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.splitlines()
    assert header.split()[:5] == ["RUN", "STEP", "CHANGE", "BY", "STATE"]
    assert "set_batch_size 32 → 64" in row and "user:alice" in row
    # The hand-worked figures of test_adaptation_payoff: 320 → 500 samples/s, E 1 → 0.8,
    # goodput 320 → 400, 0.28 s saved.
    assert "320 → 500" in row and "1.00 → 0.80" in row and "320 → 400" in row and "+0.3" in row
    assert "time saved in all +0.3 s" in shown.stderr

    as_json = json.loads(cli("jobs", "adaptations", str(job.id), "--json", "--window", "1").stdout)
    assert as_json["window"] == 1 and as_json["adaptations"][0]["after"]["throughput"] == 490
    bad = cli("jobs", "adaptations", str(job.id), "--window", "0")
    assert bad.returncode != 0 and "window" in bad.stderr
