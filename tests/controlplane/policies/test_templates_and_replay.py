"""Built-in templates are valid policies, and replay shows when a policy would have fired
on a recorded metric stream."""

import time
from datetime import UTC, datetime

import pytest

from controlplane.jobs.services.jobs import job_create
from controlplane.metrics.models import MetricPoint
from controlplane.policies import engine, replay
from controlplane.policies.templates import TEMPLATES
from tests.controlplane.metric_points import run_of

KNOBS = replay.Knobs(batch_size=32, lr=0.1, workers=2)


def stream(values_by_step: dict[int, dict[str, float]], t0: float = 1000.0, dt: float = 1.0):
    return [
        replay.Tick(step=s, time=t0 + i * dt, values=dict(v))
        for i, (s, v) in enumerate(sorted(values_by_step.items()))
    ]


@pytest.mark.parametrize("template", TEMPLATES, ids=[t["id"] for t in TEMPLATES])
def test_every_template_is_a_valid_policy(template):
    engine.parse_policy({k: v for k, v in template.items() if k != "id"})


def template(template_id):
    t = next(t for t in TEMPLATES if t["id"] == template_id)
    return engine.parse_policy({k: v for k, v in t.items() if k != "id"})


def test_gns_template_doubles_batch_only_after_noise_scale_stays_high():
    # gns rises past 2×batch (64) at step 40; the recorded batch size then follows.
    ticks = stream(
        {
            s: {"gns": 30.0 if s < 40 else 200.0, "batch_size": 32.0 if s < 80 else 64.0}
            for s in range(10, 200, 10)
        },
        dt=10.0,
    )
    result = replay.replay(template("gns-adaptive-batch"), ticks, start_time=990.0, defaults=KNOBS)
    fired = [(d["step"], d["action"]["value"]) for d in result["decisions"]]
    assert fired[0] == (60, 64)  # for: 3 → the third evaluation with gns high (40, 50, 60)
    assert all(step >= 60 for step, _ in fired)
    assert result["evaluations"] == len(ticks)


def test_scale_out_template_stops_when_the_last_worker_did_not_pay():
    values = {10: {"throughput": 20.0, "workers": 1.0}}  # the first report: tracing
    values.update({s: {"throughput": 100.0, "workers": 1.0} for s in range(20, 70, 10)})
    values.update({s: {"throughput": 190.0, "workers": 2.0} for s in range(70, 200, 10)})
    values.update({s: {"throughput": 200.0, "workers": 3.0} for s in range(200, 400, 10)})
    result = replay.replay(
        template("scale-out-while-efficient"), stream(values, dt=10.0), start_time=990.0,
        defaults=KNOBS,
    )  # fmt: skip
    # for: 3 → the third evaluation (30); the next after the 60 s cooldown, its condition
    # true for 3 evaluations by then (70, 80, 90); 3 workers gain 10 < 47.5.
    decisions = [(d["step"], d["action"]["value"]) for d in result["decisions"]]
    assert decisions == [(30, 2), (90, 3)]
    assert result["decisions"][0]["inputs"]["throughput"] == 100.0


def test_scale_out_template_does_not_take_the_tracing_report_for_its_baseline():
    # One worker's first report is slowed by tracing; a second worker adds only 20 %.
    values = {10: {"throughput": 20.0, "workers": 1.0}}
    values.update({s: {"throughput": 100.0, "workers": 1.0} for s in range(20, 70, 10)})
    values.update({s: {"throughput": 120.0, "workers": 2.0} for s in range(70, 300, 10)})
    result = replay.replay(
        template("scale-out-while-efficient"), stream(values, dt=10.0), start_time=990.0,
        defaults=KNOBS,
    )  # fmt: skip
    # Firing on the first report would make 120 look like a gain of 100 over 20.
    assert [(d["step"], d["action"]["value"]) for d in result["decisions"]] == [(30, 2)]


def test_topology_template_fires_after_sustained_interference():
    values = {s: {"throughput": 1000.0} for s in range(1, 6)}
    values.update({s: {"throughput": 700.0} for s in range(6, 30)})
    result = replay.replay(
        template("topology-on-interference"), stream(values), start_time=990.0, defaults=KNOBS
    )
    # The window (10 reports) is all below 800 from step 15 (reports 6..15); "for": 3 → 17.
    assert [d["step"] for d in result["decisions"]] == [17]
    assert result["decisions"][0]["action"] == {"type": "set_topology", "value": "tree"}


def test_topology_template_ignores_slow_reports_between_normal_ones():
    # A busy machine: every other report is 30 % down, for a long time. The latest report
    # is under 80 % of the best half the time, but the window never is.
    values = {s: {"throughput": 1000.0 if s % 2 else 700.0} for s in range(1, 200)}
    result = replay.replay(
        template("topology-on-interference"), stream(values), start_time=990.0, defaults=KNOBS
    )
    assert result["decisions"] == []


def test_long_streams_are_evaluated_at_most_max_ticks_times():
    ticks = stream({s: {"loss": 1.0} for s in range(1, 1001)})
    result = replay.replay(
        template("gns-adaptive-batch"), ticks, start_time=0, defaults=KNOBS, max_ticks=100
    )
    assert result["ticks"] == 1000 and result["evaluations"] <= 101


@pytest.mark.django_db
def test_replay_api_runs_a_policy_over_a_jobs_recorded_metrics(api, other_api, user):
    policy = api.post(
        "/api/v1/policies/",
        {
            "definition": {
                "name": "double",
                "rules": [
                    {
                        "name": "grow",
                        "when": "steps_since_fired >= 100",
                        "action": {"type": "set_batch_size", "value": "batch_size * 2"},
                        "bounds": {"max": 128},
                    }
                ],
            }
        },
        format="json",
    ).json()
    job = job_create(
        owner=user,
        name="j",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 32, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
    )
    now = time.time()
    run = run_of(job)
    MetricPoint.objects.bulk_create(
        [
            MetricPoint(
                job=job,
                run=run,
                name=name,
                step=s,
                value=value,
                time=datetime.fromtimestamp(now + s, tz=UTC),
            )
            for s in range(10, 410, 10)
            for name, value in (("loss", 1.0 / s), ("batch_size", 32.0))
        ]
    )
    reply = api.post(f"/api/v1/policies/{policy['id']}/replay/", {"job": job.id}, format="json")
    assert reply.status_code == 200, reply.json()
    body = reply.json()
    assert body["ticks"] == 40
    assert [d["step"] for d in body["decisions"]] == [100, 200, 300, 400]
    assert body["decisions"][0]["action"] == {"type": "set_batch_size", "value": 64}
    assert body["decisions"][0]["inputs"]["loss"] == pytest.approx(0.01)
    # Someone else can neither replay this policy nor replay onto this job.
    assert (
        other_api.post(
            f"/api/v1/policies/{policy['id']}/replay/", {"job": job.id}, format="json"
        ).status_code
        == 404
    )


@pytest.mark.django_db
def test_templates_are_listed(api):
    body = api.get("/api/v1/policies/templates/").json()
    assert {t["id"] for t in body} >= {
        "gns-adaptive-batch",
        "sma-to-ssgd",
        "scale-out-while-efficient",
        "topology-on-interference",
    }
    assert all("rules" in t["definition"] for t in body)
