"""The Slurm client side: the batch script and command lines for sbatch, squeue and scancel,
and running them (a pure core plus one ``run`` that shells out).

The batch script runs one agent per node (``srun --ntasks-per-node=1 python -m
agent.slurm``). The join token travels in the job's environment (``--export`` of the
submitting process's environment), never on a command line, so ``ps`` and ``squeue``
do not show it; Slurm keeps the environment in its spool, readable by root and the
SlurmUser only.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass

PARTITION_FORM = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
GRES_FORM = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")  # gpu:2, gpu:a100:2
# Slurm's time forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED.
TIME_FORM = re.compile(r"^(\d+(-\d{1,2}(:\d{1,2}){0,2}|(:\d{1,2}){1,2})?|UNLIMITED|unlimited)$")
JOB_NAME = "adaptrain-agents"
COMMAND_TIMEOUT_S = 30.0
# Passed on from the control plane's environment to sbatch (and so to the job).
BASE_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "SLURM_CONF")

# squeue's states, and the allocation status each means.
QUEUE_STATES = {
    "PENDING": "pending",
    "CONFIGURING": "pending",
    "REQUEUED": "pending",
    "RESV_DEL_HOLD": "pending",
    "RUNNING": "running",
    "SUSPENDED": "running",
    "COMPLETING": "ending",
    "STOPPED": "ending",
    "SIGNALING": "ending",
}


class SlurmCommandFailed(Exception):
    pass


@dataclass(frozen=True)
class Request:
    nodes: int
    partition: str = ""
    gres: str = ""
    time_limit: str = ""


def check_request(request: Request) -> dict[str, str]:
    """What is wrong with each field (empty when nothing is)."""
    errors = {}
    if not 1 <= request.nodes <= 10_000:
        errors["nodes"] = f"nodes must be from 1 to 10000; got {request.nodes}."
    if request.partition and not PARTITION_FORM.match(request.partition):
        errors["partition"] = (
            f"{request.partition!r} is not a partition name (letters, digits, _ . -)."
        )
    if request.gres and not GRES_FORM.match(request.gres):
        errors["gres"] = f"{request.gres!r} is not a GRES such as gpu:2 or gpu:a100:2."
    if request.time_limit and not TIME_FORM.match(request.time_limit):
        errors["time_limit"] = (
            f"{request.time_limit!r} is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)."
        )
    return errors


def batch_script(*, agent_python: str) -> str:
    """The batch script: one agent per node, in the foreground, so that Slurm's signals at
    the allocation's end reach them. ``--kill-on-bad-exit=0``: one agent that stops does
    not end the others."""
    python = shlex.quote(agent_python)
    return (
        "#!/bin/bash\n"
        "# Submitted by the adaptrain control plane: one agent per allocated node.\n"
        f"exec srun --ntasks-per-node=1 --kill-on-bad-exit=0 {python} -m agent.slurm\n"
    )


def sbatch_argv(request: Request, *, bin_dir: str, output: str, allocation_id: int) -> list[str]:
    argv = [
        _binary(bin_dir, "sbatch"),
        "--parsable",
        f"--job-name={JOB_NAME}-{allocation_id}",
        f"--nodes={request.nodes}",
        "--ntasks-per-node=1",
        f"--output={output}",
        "--export=ALL",
    ]
    if request.partition:
        argv.append(f"--partition={request.partition}")
    if request.gres:
        argv.append(f"--gres={request.gres}")
    if request.time_limit:
        argv.append(f"--time={request.time_limit}")
    return argv


def job_environment(
    request: Request,
    *,
    server: str,
    join_token: str,
    allocation_id: int,
    agent_env: str,
) -> dict[str, str]:
    """The environment sbatch exports to the job: a small base (not the control plane's
    own, which holds its secrets) plus the agents' settings."""
    env = {k: os.environ[k] for k in BASE_ENVIRONMENT if k in os.environ}
    for word in shlex.split(agent_env):
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"SLURM_AGENT_ENV: {word!r} is not KEY=VALUE.")
        env[key] = value
    env.update(
        {
            "AGENT_SERVER": server,
            "AGENT_JOIN_TOKEN": join_token,
            "ADAPTRAIN_SLURM_ALLOCATION": str(allocation_id),
            "ADAPTRAIN_SLURM_GRES": request.gres,
        }
    )
    return env


def parse_job_id(stdout: str) -> str:
    """``sbatch --parsable`` prints ``<job id>`` or ``<job id>;<cluster>``."""
    first = (stdout.strip().splitlines() or [""])[0]
    job_id = first.split(";")[0].strip()
    if not job_id.isdigit():
        raise SlurmCommandFailed(f"sbatch printed {stdout.strip()!r}, not a job id")
    return job_id


def parse_queue(stdout: str) -> dict[str, str]:
    """``squeue -h -o '%i %T'`` lines → {job id: allocation status}."""
    states = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            states[parts[0]] = QUEUE_STATES.get(parts[1].upper(), "running")
    return states


def _binary(bin_dir: str, name: str) -> str:
    return os.path.join(bin_dir, name) if bin_dir else name


def run(argv: list[str], *, stdin: str = "", env: dict[str, str] | None = None) -> str:
    """Run a Slurm client command; its stdout, or SlurmCommandFailed with its stderr."""
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise SlurmCommandFailed(
            f"{argv[0]} is not installed here (set SLURM_BIN_DIR to Slurm's bin directory)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmCommandFailed(
            f"{os.path.basename(argv[0])} did not answer within {COMMAND_TIMEOUT_S:.0f} s"
        ) from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()[:500]
        raise SlurmCommandFailed(
            f"{os.path.basename(argv[0])} failed (exit {done.returncode}): {said}"
        )
    return done.stdout


def squeue_argv(*, bin_dir: str) -> list[str]:
    """Every job in the queue (``-j`` with a job Slurm has already forgotten is an error)."""
    return [_binary(bin_dir, "squeue"), "-h", "-o", "%i %T"]


def scancel_argv(job_id: str, *, bin_dir: str) -> list[str]:
    return [_binary(bin_dir, "scancel"), job_id]
