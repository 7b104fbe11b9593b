"""Fresh metrics schedule a (debounced) policy evaluation of their job through Celery."""

import time

import pytest
import redis
from django.conf import settings

from controlplane.jobs.models import Job
from controlplane.jobs.services.jobs import job_create
from controlplane.jobs.services.nodes import join_token_create, node_enrol
from controlplane.jobs.services.scheduling import job_place
from controlplane.metrics.services import metrics_ingest
from controlplane.policies.services import policy_create

pytestmark = pytest.mark.django_db(transaction=True)


def test_ingest_enqueues_a_leading_and_a_trailing_evaluation_per_debounce_window(user):
    _, token = join_token_create()
    node, _ = node_enrol(join_token=token, name="n1", address="127.0.0.1", slots=4, labels={})
    policy = policy_create(
        owner=user,
        definition={
            "name": "p",
            "rules": [{"name": "r", "when": "step > 1000000", "action": {"type": "stop"}}],
        },
    )
    job = job_create(
        owner=user,
        name="j",
        entrypoint="examples.digits",
        hyperparameters={"batch_size": 8, "lr": 0.1},
        workers_initial=1,
        workers_min=1,
        workers_max=1,
        strategy="ssgd",
        topology="ring",
        policy=policy,
    )
    job_place(job_id=job.id)
    Job.objects.filter(id=job.id).update(status="running")
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue = settings.CELERY_TASK_DEFAULT_QUEUE

    def queued_evaluations() -> int:
        return sum(b"policies.evaluate_job" in item for item in broker.lrange(queue, 0, -1))

    before = queued_evaluations()
    for i in range(3):
        metrics_ingest(
            node=node,
            batch_id=f"b{i}",
            points=[{"job": job.id, "name": "loss", "step": i, "value": 1.0, "time": time.time()}],
        )
    assert queued_evaluations() == before + 2  # now, and at the end of the window
    time.sleep(0.6)  # the window has passed
    metrics_ingest(
        node=node,
        batch_id="b9",
        points=[{"job": job.id, "name": "loss", "step": 9, "value": 1.0, "time": time.time()}],
    )
    assert queued_evaluations() == before + 4
    broker.delete(queue)
