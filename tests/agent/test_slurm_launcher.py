"""agent.slurm derives the agent's settings from a Slurm task's environment."""

import pytest

from agent.daemon.config import load_config
from agent.slurm import NotInSlurm, agent_environment

TASK = {
    "SLURM_JOB_ID": "42",
    "SLURMD_NODENAME": "gpu07",
    "SLURM_JOB_PARTITION": "gpu",
    "ADAPTRAIN_SLURM_GRES": "gpu:4",
    "ADAPTRAIN_SLURM_ALLOCATION": "3",
    "ADAPTRAIN_SLURM_STATE_ROOT": "/scratch/adaptrain",
}


def test_a_slurm_task_becomes_a_node_named_and_labelled_after_its_job():
    env = agent_environment({**TASK, "AGENT_LABELS": "zone=eu-1"})
    assert env["AGENT_NAME"] == "slurm-42-gpu07"
    assert env["AGENT_STATE_DIR"] == "/scratch/adaptrain/42/gpu07"
    assert env["AGENT_ON_EXIT"] == "leave"
    config = load_config({**env, "AGENT_ADDRESS": "10.0.0.7"})
    assert config.labels == {
        "zone": "eu-1",
        "slurm_job": "42",
        "slurm_partition": "gpu",
        "slurm_gres": "gpu:4",
        "slurm_allocation": "3",
    }
    assert config.on_exit == "leave" and config.leave_timeout_s == 20.0


def test_gpus_follow_what_slurm_bound_to_the_step():
    assert agent_environment({**TASK, "SLURM_STEP_GPUS": "1,3"})["AGENT_GPUS"] == "1,3"
    assert agent_environment({**TASK, "SLURM_JOB_GPUS": "0"})["AGENT_GPUS"] == "0"
    assert agent_environment(TASK)["AGENT_GPUS"] == "none"  # no GRES: no GPU of the node's
    # Slurm's CUDA_VISIBLE_DEVICES is honoured by GPU discovery itself.
    assert "AGENT_GPUS" not in agent_environment({**TASK, "CUDA_VISIBLE_DEVICES": "0,1"})


def test_outside_slurm_it_says_how_to_start_the_agent_instead():
    with pytest.raises(NotInSlurm, match="python -m agent"):
        agent_environment({})
