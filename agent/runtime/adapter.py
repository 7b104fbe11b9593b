"""What the framework-neutral trainer needs from a framework: a model and its optimizer as
flat NumPy arrays, and a training step.

:class:`ModelAdapter` is the seam between the runtime's core (the loop, strategies,
membership, checkpoints) and a framework. :class:`agent.runtime.tf.KerasModel`
implements it for Keras on TensorFlow; a PyTorch runtime implements the same methods
for an ``nn.Module`` and a ``torch.optim.Optimizer``. Every array crossing it is a NumPy
array the caller may keep and write (a copy, not a view of framework memory); the
parameters travel as one float32 vector, in a fixed order that is the same on every
worker that built the same model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class ModelAdapter(Protocol):
    def build(
        self, x_sample: np.ndarray, allreduce_in_step: Callable[[np.ndarray], np.ndarray]
    ) -> None:
        """Create the model's variables and the optimizer's state (from at least one
        sample) and prepare the steps. ``allreduce_in_step`` is what :meth:`fused_step`
        calls between the gradients and the update; it sums a float32 buffer over the
        workers in place (and returns it), and may raise (a peer died)."""

    def gradients(self, x: np.ndarray, y: np.ndarray, global_batch: int) -> np.ndarray:
        """This worker's gradients of ``sum(loss) / global_batch`` over (x, y), as one
        flat float32 buffer followed by three values: the loss sum, the count of correct
        predictions, and a 0 slot (the caller may put a squared norm there). Summed over
        the workers, the gradients are those of the mean loss over the global batch."""

    def apply_gradients(self, gradients: np.ndarray) -> None:
        """One optimizer update with flat ``gradients`` (the layout :meth:`gradients` returns)."""

    def fused_step(
        self,
        x: np.ndarray,
        y: np.ndarray,
        global_batch: int,
        local_scale_sq: float,
        extra_slots: int,
        monitor: bool,
        distributed: bool,
    ) -> np.ndarray:
        """S-SGD's whole step in one call: the gradients as :meth:`gradients` computes
        them, the loss sum, correct count and (when ``monitor``) the squared gradient norm
        times ``local_scale_sq`` after them, then ``extra_slots`` zeros; when
        ``distributed``, that buffer through ``allreduce_in_step``; then the update with
        the summed gradients. Returns [loss sum, correct count, summed squared local
        norms, squared norm of the summed gradient] (norms 0 unless ``monitor``). A
        failure of ``allreduce_in_step`` leaves the model unchanged and is raised as it
        was raised. A framework without compiled steps may run the three parts in turn;
        the point of one call is to spare a small model the per-call overhead."""

    def weights(self) -> np.ndarray:
        """Every trainable parameter, as one float32 vector."""

    def set_weights(self, flat: np.ndarray) -> None:
        """Assign every trainable parameter from one float32 vector (as :meth:`weights`)."""

    def state(self) -> list[np.ndarray]:
        """Everything that defines the training state: every model variable (trainable or
        not), then every optimizer variable, each with its own shape and dtype."""

    def load_state(self, arrays: list[np.ndarray]) -> None:
        """Assign what :meth:`state` returned (on this or another worker)."""

    def optimizer_state(self) -> list[np.ndarray]:
        """The optimizer's variables (slots such as momentum, counters), as in :meth:`state`."""

    def load_optimizer_state(self, arrays: list[np.ndarray]) -> None:
        """Assign what :meth:`optimizer_state` returned."""

    def set_learning_rate(self, lr: float) -> None:
        """The learning rate of the following updates."""

    def checksum(self) -> float:
        """A sum over the trainable parameters: equal on workers with bit-identical models."""
