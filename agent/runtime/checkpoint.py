"""Checkpoint folders: a training state written so that a new run can continue from it.

``<checkpoint_dir>/step-<N>/`` holds ``state.npz`` (the arrays of
:meth:`~agent.runtime.adapter.ModelAdapter.state`, in order: model variables, then
optimizer variables) and ``meta.json`` (:class:`Meta`: step, global batch size, learning
rate, and the data position in the epoch). A checkpoint is written into a temporary
folder and renamed, so a crash never leaves half of one. The control plane points a
resumed run at the folder (hyper-parameter ``resume_from``). Framework-neutral: no
TensorFlow here.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Meta:
    step: int
    batch_size: int
    lr: float
    epoch: int  # where the next global batch starts (GlobalBatchSampler.state)
    position: int


def folder(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step-{step:09d}"


def save(directory: str | Path, meta: Meta, arrays: list[np.ndarray]) -> Path:
    """Write a checkpoint of step ``meta.step`` under ``directory``; returns its folder."""
    target = folder(directory, meta.step)
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    np.savez(tmp / "state.npz", *arrays)
    (tmp / "meta.json").write_text(json.dumps(asdict(meta)))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def load(path: str | Path) -> tuple[Meta, list[np.ndarray]]:
    """Read a checkpoint folder: its metadata and its arrays, in the order written."""
    path = Path(path)
    raw = json.loads((path / "meta.json").read_text())
    meta = Meta(
        step=int(raw["step"]),
        batch_size=int(raw["batch_size"]),
        lr=float(raw["lr"]),
        epoch=int(raw["epoch"]),
        position=int(raw["position"]),
    )
    with np.load(path / "state.npz") as state:
        arrays = [state[f"arr_{i}"] for i in range(len(state.files))]
    return meta, arrays
