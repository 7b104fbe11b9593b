"""Start the agent as one task of a Slurm allocation (``srun --ntasks-per-node=1 python -m
agent.slurm``, from the batch script the control plane submits: controlplane/slurm).

It derives the agent's settings from the task's ``SLURM_*`` environment and then runs the
agent in this process (so Slurm's ``SIGTERM`` at the allocation's end reaches it):

* ``AGENT_NAME``: ``slurm-<job id>-<node name>`` (unique per allocation and host);
* ``AGENT_LABELS``: ``slurm_job``, ``slurm_partition``, ``slurm_gres`` (as submitted) and
  ``slurm_allocation`` (the control plane's id), added to any given;
* ``AGENT_STATE_DIR``: ``$ADAPTRAIN_SLURM_STATE_ROOT/<job id>/<node name>`` (default root
  ``/tmp/adaptrain-slurm``), a fresh enrolment per allocation;
* ``AGENT_ON_EXIT=leave``: on ``SIGTERM`` the node's elastic jobs shrink its workers away
  before it goes (docs/slurm.md);
* ``AGENT_GPUS``: the GPUs Slurm bound to the step (``SLURM_STEP_GPUS``, else
  ``SLURM_JOB_GPUS``) when ``CUDA_VISIBLE_DEVICES`` is not set; ``none`` without GRES.

Settings already in the environment win, except the name, state directory and labels.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

DEFAULT_STATE_ROOT = "/tmp/adaptrain-slurm"


class NotInSlurm(RuntimeError):
    pass


def agent_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The agent's ``AGENT_*`` settings for this Slurm task (only those to set)."""
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    host = env.get("SLURMD_NODENAME") or os.uname().nodename.split(".")[0]
    if not job_id:
        raise NotInSlurm(
            "agent.slurm runs as a task of a Slurm job (SLURM_JOB_ID is not set); start the "
            "agent with python -m agent elsewhere"
        )
    labels = {
        "slurm_job": job_id,
        "slurm_partition": env.get("SLURM_JOB_PARTITION") or "",
        "slurm_gres": env.get("ADAPTRAIN_SLURM_GRES") or "",
        "slurm_allocation": env.get("ADAPTRAIN_SLURM_ALLOCATION") or "",
    }
    given = env.get("AGENT_LABELS") or ""
    label_text = ",".join(
        [e for e in (p.strip() for p in given.split(",")) if e]
        + [f"{k}={v.replace(',', ';')}" for k, v in labels.items() if v]
    )
    root = env.get("ADAPTRAIN_SLURM_STATE_ROOT") or DEFAULT_STATE_ROOT
    out = {
        "AGENT_NAME": f"slurm-{job_id}-{host}",
        "AGENT_LABELS": label_text,
        "AGENT_STATE_DIR": os.path.join(root, job_id, host),
        "AGENT_ON_EXIT": env.get("AGENT_ON_EXIT") or "leave",
    }
    if not env.get("AGENT_GPUS") and env.get("CUDA_VISIBLE_DEVICES") is None:
        gpus = env.get("SLURM_STEP_GPUS") or env.get("SLURM_JOB_GPUS")
        out["AGENT_GPUS"] = gpus if gpus else "none"
    return out


def main() -> int:
    try:
        os.environ.update(agent_environment(os.environ))
    except NotInSlurm as exc:
        print(f"agent.slurm: {exc}", file=sys.stderr)
        return 2
    from agent.__main__ import main as agent_main

    agent_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
