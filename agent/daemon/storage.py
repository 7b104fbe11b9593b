"""The files the agent keeps under ``AGENT_STATE_DIR`` so that a restarted agent carries on
where the previous one stopped: where each lives, and how they are written.

``credential`` (the node credential), ``outbox.json`` (reports not yet confirmed),
``metrics/`` (metric points not yet stored by the control plane; :mod:`agent.daemon.metrics`),
``jobs/job-<id>.json`` (each job's workers and commands), ``run/job-<id>-<n>.sock``
(each worker's socket), ``logs/job-<id>.rank-<n>.log`` (each worker's output, with the
rotated-out ``….log.1``; :mod:`agent.daemon.logs`), ``logs/job-<id>.shipping.json``
(how far each job's output was shipped; :mod:`agent.daemon.logship`), and
``bundles/<sha256>/`` and ``work/job-<id>/`` (code bundles and the jobs' working
directories; :mod:`agent.daemon.bundles`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def outbox_path(state_dir: Path) -> Path:
    return state_dir / "outbox.json"


def metrics_dir(state_dir: Path) -> Path:
    return state_dir / "metrics"


def jobs_dir(state_dir: Path) -> Path:
    return state_dir / "jobs"


def job_state_path(state_dir: Path, job_id: int) -> Path:
    return jobs_dir(state_dir) / f"job-{job_id}.json"


def socket_path(state_dir: Path, job_id: int, rank: int) -> Path:
    return state_dir / "run" / f"job-{job_id}-{rank}.sock"


def log_path(state_dir: Path, job_id: int, rank: int) -> Path:
    return state_dir / "logs" / f"job-{job_id}.rank-{rank}.log"


def log_shipping_path(state_dir: Path, job_id: int) -> Path:
    return state_dir / "logs" / f"job-{job_id}.shipping.json"


def write_json_atomically(path: Path, data: Any, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data``: a crash leaves the old file or the new one, whole
    (``durable=False``: a crash of the process, not of the machine — no fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
