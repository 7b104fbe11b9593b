"""One worker of ``bench.monitor_ab``: a ``*_torch`` example's model trained by our
PyTorch runtime with the gradient-noise monitor on and off in alternating segments of
``segment_steps`` steps, in the same processes (on, off, off, on, on, off, …: ABBA by
segment), so the machine's drift lands on both sides alike.

Hyper-parameters: ``model`` (``digits`` or ``synthetic_cnn``), ``segments``,
``segment_steps``, ``log_every`` (divides ``segment_steps``), ``batch_size``, ``lr``,
``seed``. Model, data and optimizer are those of the examples (``bench._ddp_worker.load``).
"""

from __future__ import annotations

import torch

from agent import runtime
from agent.runtime import torch as runtime_torch
from bench._ddp_worker import load


def monitored(segment: int) -> bool:
    """Whether the monitor runs in ``segment``: segment 0 is warm-up (monitored, as the
    job default is); after it on, off, off, on, on, off, … so that segments (1, 2),
    (3, 4), … are pairs of one of each, in alternating order."""
    return segment == 0 or (segment - 1) % 4 in (0, 3)


def main() -> None:
    runtime_torch.configure_torch_threads(1)
    session = runtime.init()
    hp = session.hyperparameters
    seed = int(hp.get("seed", 0))
    x, y, build_model = load(str(hp["model"]), seed, 4096)
    model = build_model(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=session.lr, momentum=0.9)
    trainer = runtime_torch.Trainer(session, model, optimizer, seed=seed)
    segment_steps = int(hp["segment_steps"])
    for segment in range(int(hp["segments"])):
        trainer.fit(
            x,
            y,
            steps=(segment + 1) * segment_steps,
            log_every=int(hp["log_every"]),
            monitor_every=1 if monitored(segment) else 0,
        )


if __name__ == "__main__":
    main()
