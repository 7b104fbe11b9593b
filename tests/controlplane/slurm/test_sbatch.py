"""The Slurm client core: requests checked, the batch script and command lines, sbatch's
and squeue's output read; the join token never on a command line."""

import pytest

from controlplane.slurm import sbatch


def test_requests_are_checked_field_by_field():
    assert (
        sbatch.check_request(
            sbatch.Request(nodes=2, partition="gpu", gres="gpu:a100:4", time_limit="1-08:00:00")
        )
        == {}
    )
    assert sbatch.check_request(sbatch.Request(nodes=1, time_limit="90")) == {}
    errors = sbatch.check_request(
        sbatch.Request(nodes=0, partition="a b", gres="gpu 2", time_limit="soon")
    )
    assert set(errors) == {"nodes", "partition", "gres", "time_limit"}
    assert "gpu:2" in errors["gres"]


def test_the_batch_job_runs_one_agent_per_node_and_keeps_the_token_in_its_environment():
    request = sbatch.Request(nodes=3, partition="gpu", gres="gpu:4", time_limit="8:00:00")
    argv = sbatch.sbatch_argv(
        request, bin_dir="/opt/slurm/bin", output="/tmp/o-%j", allocation_id=7
    )
    assert argv[0] == "/opt/slurm/bin/sbatch" and "--parsable" in argv
    assert {
        "--nodes=3",
        "--ntasks-per-node=1",
        "--partition=gpu",
        "--gres=gpu:4",
        "--time=8:00:00",
    } <= set(argv)
    script = sbatch.batch_script(agent_python="/opt/adaptrain/bin/python")
    assert "srun --ntasks-per-node=1" in script and "-m agent.slurm" in script
    env = sbatch.job_environment(
        request,
        server="http://cp:8000",
        join_token="join_secret",
        allocation_id=7,
        agent_env="AGENT_SLOTS=8 AGENT_LABELS='rack=r1'",
    )
    assert env["AGENT_JOIN_TOKEN"] == "join_secret" and env["AGENT_SLOTS"] == "8"
    assert env["AGENT_LABELS"] == "rack=r1" and env["ADAPTRAIN_SLURM_GRES"] == "gpu:4"
    assert not any("join_secret" in a for a in argv) and "join_secret" not in script
    assert "DATABASE_URL" not in env and "SECRET_KEY" not in env
    with pytest.raises(ValueError, match="KEY=VALUE"):
        sbatch.job_environment(
            request, server="s", join_token="t", allocation_id=1, agent_env="oops"
        )


def test_sbatch_and_squeue_output_are_read():
    assert sbatch.parse_job_id("1234\n") == "1234"
    assert sbatch.parse_job_id("1234;cluster-a\n") == "1234"
    with pytest.raises(sbatch.SlurmCommandFailed):
        sbatch.parse_job_id("Submitted batch job 12")
    assert sbatch.parse_queue("12 PENDING\n13 RUNNING\n14 COMPLETING\n") == {
        "12": "pending",
        "13": "running",
        "14": "ending",
    }


def test_a_missing_slurm_client_says_what_to_set():
    with pytest.raises(sbatch.SlurmCommandFailed, match="SLURM_BIN_DIR"):
        sbatch.run(["/nonexistent/sbatch"])
