"""A worker with its own PyTorch training step, synchronised only through the runtime's
public building blocks (DistributedOptimizer, broadcast_parameters, GlobalBatchSampler);
reports the loss and a checksum of its weights every 10 steps."""

from __future__ import annotations

import torch

from agent import runtime
from agent.runtime import torch as runtime_torch
from examples.digits.train import load_data
from examples.digits_torch.train import build_model


def main() -> None:
    runtime_torch.configure_torch_threads(1)
    session = runtime.init()
    hp = session.hyperparameters
    (x, y), _ = load_data(0)
    # A different seed per worker: broadcast_parameters must make them equal.
    model = build_model(seed=100 + max(session.rank, 0))
    optimizer = runtime_torch.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), session
    )
    runtime_torch.broadcast_parameters(model, session)
    x_all, y_all = torch.from_numpy(x), torch.from_numpy(y).long()
    sampler = runtime.GlobalBatchSampler(len(x), seed=0)
    for i in range(int(hp["steps"])):
        mine = runtime.GlobalBatchSampler.shard(sampler.next(64), session.rank, session.size)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x_all[mine]), y_all[mine])
        loss.backward()
        optimizer.step()
        if (i + 1) % 10 == 0:
            checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
            session.report(
                {"loss": float(loss), "param_checksum": checksum}, step=i + 1, per_rank=True
            )


if __name__ == "__main__":
    main()
