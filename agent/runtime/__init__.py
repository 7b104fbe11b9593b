"""The training runtime a worker's script imports: synchronous data-parallel training
for Keras models, with knobs that change while training runs.

    from agent import runtime
    session = runtime.init()
    trainer = runtime.Trainer(session, model, optimizer, loss_fn)
    trainer.fit(x_train, y_train, steps=session.hyperparameters["steps"])

Every step, the workers first agree on the live commands (``set_batch_size``,
``set_lr``, ``set_strategy``, ``pause``, ``stop``, …) and cluster versions each has
received, so all apply them at the same step whatever the arrival order; then each
takes its share of the next global batch and trains it with the job's strategy (S-SGD,
SMA or pair averaging) over the native collective library. Without the agent's
environment (``ADAPTRAIN_*``) a script runs as a single worker.

The package, by responsibility:

- :mod:`~agent.runtime.session`: the worker's identity and its link to the agent
  (:func:`init`, :class:`Session`; every message to the agent is built there);
  :mod:`~agent.runtime.channel`: the agent's socket; :mod:`~agent.runtime.launcher`:
  how the agent starts a worker.
- :mod:`~agent.runtime.commands`: the command inbox, the agreement, the dispatch table.
- :mod:`~agent.runtime.membership`: cluster versions, communicators, join, leave, recover.
- :mod:`~agent.runtime.trainer`: the loop; :mod:`~agent.runtime.strategies`: S-SGD, SMA,
  pair averaging; :mod:`~agent.runtime.adapter`: what the loop needs from a framework.
- :mod:`~agent.runtime.sampler`, :mod:`~agent.runtime.checkpoint`,
  :mod:`~agent.runtime.monitors`, :mod:`~agent.runtime.scaling`: global batches,
  checkpoint folders, the gradient-noise monitor, learning-rate rules.
- :mod:`~agent.runtime.tf` and :mod:`~agent.runtime.step`: the TensorFlow edge (the
  Keras adapter and :class:`Trainer`, the compiled steps, building blocks for a custom
  step).
- :mod:`~agent.runtime.torch`: the PyTorch edge (the ``nn.Module`` adapter with bucketed
  gradients overlapped with backward, its :class:`Trainer`, building blocks for a custom
  step); import it as ``from agent.runtime import torch as runtime_torch``.

**Layering rule**: only the framework edges import a framework (``tf`` and ``step``
TensorFlow, ``torch`` PyTorch); the core (everything else here) imports none, so the
two edges sit side by side. Importing ``agent.runtime`` imports no framework
either: the TensorFlow names below are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.runtime.sampler import GlobalBatchSampler
from agent.runtime.session import Session, init

if TYPE_CHECKING:
    from agent.runtime.tf import (
        DistributedOptimizer,
        Trainer,
        allreduce_gradients,
        broadcast_variables,
        configure_tensorflow_threads,
        evaluate_accuracy,
    )

_TENSORFLOW_NAMES = frozenset(
    {
        "DistributedOptimizer",
        "Trainer",
        "allreduce_gradients",
        "broadcast_variables",
        "configure_tensorflow_threads",
        "evaluate_accuracy",
    }
)


def __getattr__(name: str) -> Any:
    # The TensorFlow edge is imported on first use, so that workers and tools that only
    # need the session (and the agent's own tests) do not load TensorFlow.
    if name in _TENSORFLOW_NAMES:
        from agent.runtime import tf

        return getattr(tf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DistributedOptimizer",
    "GlobalBatchSampler",
    "Session",
    "Trainer",
    "allreduce_gradients",
    "broadcast_variables",
    "configure_tensorflow_threads",
    "evaluate_accuracy",
    "init",
]
