"""Train a small dense network on scikit-learn's digits with the adaptive runtime, in PyTorch.

The PyTorch twin of :mod:`examples.digits.train`: the same data (and split), the same
model sizes (64 → 64 → 10), the same hyper-parameters (``batch_size`` global, ``lr``,
``steps``, ``log_every``, ``seed``, ``monitor_every``, ``resume_from``). Run by the agent
as ``python -m examples.digits_torch.train`` (one process per worker), or alone for a
single-process baseline.
"""

from __future__ import annotations

import torch

from agent import runtime
from agent.runtime import torch as runtime_torch
from examples.digits.train import load_data


def keras_initialization(model: torch.nn.Module) -> None:
    """Keras's defaults (Glorot-uniform weights, zero biases), so the model starts as the
    TensorFlow example's does rather than with PyTorch's own initialisation."""
    for layer in model.modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.zeros_(layer.bias)


def build_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )
    keras_initialization(model)
    return model


def main() -> None:
    runtime_torch.configure_torch_threads(1)
    session = runtime.init()
    hp = session.hyperparameters
    seed = int(hp.get("seed", 0))
    (x_train, y_train), (x_test, y_test) = load_data(seed)
    model = build_model(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=session.lr, momentum=0.9)
    trainer = runtime_torch.Trainer(session, model, optimizer, seed=seed)
    trainer.fit(
        x_train,
        y_train,
        steps=int(hp.get("steps", 1000)),
        log_every=int(hp.get("log_every", 10)),
        monitor_every=int(hp.get("monitor_every", 1)),
        resume_from=hp.get("resume_from"),
    )
    if session.rank == 0:
        accuracy = runtime_torch.evaluate_accuracy(model, x_test, y_test)
        session.report({"val_accuracy": accuracy}, step=trainer.step)
        print(f"test accuracy after {trainer.step} steps: {accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
