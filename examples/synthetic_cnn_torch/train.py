"""Train a small CNN (about 2.2 M parameters) on generated 32×32×3 images, in PyTorch.

The PyTorch twin of :mod:`examples.synthetic_cnn.train`: the same generated data (laid
out channels-first, as PyTorch's convolutions take it), the same layers and parameter
count, the same hyper-parameters (``batch_size`` global, ``lr``, ``steps``,
``log_every``, ``seed``, ``samples`` (default 4096), ``monitor_every``, ``resume_from``).
Runs on the GPU when ``device`` is ``"cuda"`` (hyper-parameter; default ``"cpu"``).
"""

from __future__ import annotations

import numpy as np
import torch

from agent import runtime
from agent.runtime import torch as runtime_torch
from examples.digits_torch.train import keras_initialization
from examples.synthetic_cnn.train import make_data


def build_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 128, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(128 * 8 * 8, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )
    keras_initialization(model)
    return model


def main() -> None:
    runtime_torch.configure_torch_threads(1)
    session = runtime.init()
    hp = session.hyperparameters
    seed = int(hp.get("seed", 0))
    x, y = make_data(int(hp.get("samples", 4096)), seed)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # NHWC -> NCHW
    model = build_model(seed).to(hp.get("device", "cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=session.lr, momentum=0.9)
    trainer = runtime_torch.Trainer(session, model, optimizer, seed=seed)
    trainer.fit(
        x,
        y,
        steps=int(hp.get("steps", 200)),
        log_every=int(hp.get("log_every", 10)),
        monitor_every=int(hp.get("monitor_every", 1)),
        resume_from=hp.get("resume_from"),
    )
    if session.rank == 0:
        params = sum(p.numel() for p in model.parameters())
        print(f"{params} parameters; finished at step {trainer.step}", flush=True)


if __name__ == "__main__":
    main()
