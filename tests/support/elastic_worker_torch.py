"""The digits example on the PyTorch runtime as a worker that also records which samples
it trained on (the records of :mod:`tests.support.elastic_worker`)."""

from __future__ import annotations

import torch

from agent import runtime
from agent.runtime import torch as runtime_torch
from examples.digits.train import load_data
from examples.digits_torch.train import build_model
from tests.support.elastic_worker import record_batches


def main() -> None:
    runtime_torch.configure_torch_threads(1)
    session = runtime.init()
    hp = session.hyperparameters
    (x_train, y_train), _ = load_data(0)
    model = build_model(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=session.lr, momentum=0.9)
    trainer = runtime_torch.Trainer(session, model, optimizer, seed=0)
    log = record_batches(trainer, session)
    trainer.fit(
        x_train,
        y_train,
        steps=int(hp["steps"]),
        log_every=int(hp.get("log_every", 5)),
        monitor_every=0,
    )
    log.close()


if __name__ == "__main__":
    main()
