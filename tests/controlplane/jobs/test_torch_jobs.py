"""A PyTorch job is a job: the PyTorch examples are entrypoints like the Keras ones, and
the PyTorch runtime's hyper-parameters (bucket_mb, device) are checked like the rest."""

import pytest

from controlplane.jobs.models import Job

pytestmark = pytest.mark.django_db

VALID = {
    "name": "digits-torch",
    "entrypoint": "examples.digits_torch",
    "hyperparameters": {"batch_size": 32, "lr": 0.05, "bucket_mb": 0.5},
    "workers": {"initial": 2, "min": 1, "max": 4},
}


def test_a_pytorch_example_is_an_entrypoint_and_runs_its_module(api):
    response = api.post("/api/v1/jobs/", VALID, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["hyperparameters"]["bucket_mb"] == 0.5
    job = Job.objects.get(id=response.json()["id"])
    assert job.module == "examples.digits_torch.train"


@pytest.mark.parametrize(
    "hyperparameters, fragment",
    [
        ({"bucket_mb": -1}, "bucket_mb must be between 0.0 and 1024.0"),
        ({"device": "tpu"}, "device must be one of cpu, cuda"),
    ],
)
def test_bad_pytorch_hyperparameters_are_refused_with_what_to_fix(api, hyperparameters, fragment):
    body = {**VALID, "hyperparameters": {"batch_size": 32, "lr": 0.05, **hyperparameters}}
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400
    assert fragment in response.json()["message"]
