"""Services queue Celery tasks by name (they never import the tasks modules): each name
they queue is the name of the task meant, so a renamed task cannot be missed silently."""

from controlplane.jobs import tasks as job_tasks
from controlplane.jobs.services.jobs import PLACE_JOB_TASK
from controlplane.jobs.services.nodes import PLACE_PENDING_JOBS_TASK
from controlplane.metrics.services import EVALUATE_JOB_TASK
from controlplane.policies import tasks as policy_tasks


def test_the_names_services_queue_are_the_names_of_the_tasks_meant():
    assert PLACE_JOB_TASK == job_tasks.place_job.name
    assert PLACE_PENDING_JOBS_TASK == job_tasks.place_pending_jobs.name
    assert EVALUATE_JOB_TASK == policy_tasks.evaluate_job.name
