"""The TensorFlow edge of the runtime: Keras models in the framework-neutral trainer, and
building blocks for scripts that write their own training step.

- :class:`KerasModel` adapts a Keras model, optimizer and loss to
  :class:`~agent.runtime.adapter.ModelAdapter` (its compiled steps are
  :mod:`agent.runtime.step`'s); :class:`Trainer` is the trainer of
  :mod:`agent.runtime.trainer` on one.
- :func:`broadcast_variables`, :func:`allreduce_gradients` and
  :class:`DistributedOptimizer` synchronise a script's own ``tf.function`` step.
- :func:`configure_tensorflow_threads`, :func:`evaluate_accuracy`.

Only this module and :mod:`agent.runtime.step` import TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from agent.runtime import trainer
from agent.runtime.session import Session
from agent.runtime.step import CompiledSteps


class KerasModel:
    """A Keras model, its optimizer and a per-sample loss as a
    :class:`~agent.runtime.adapter.ModelAdapter`.

    ``loss_fn`` maps (labels, logits) to per-sample losses (``reduction="none"``)."""

    # Set by build().
    _steps: CompiledSteps
    _allreduce: Callable[[np.ndarray], np.ndarray]

    def __init__(self, model, optimizer, loss_fn):
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self._variables: list = []
        self._step_error: Exception | None = None
        self._scalars: dict = {}

    def build(
        self, x_sample: np.ndarray, allreduce_in_step: Callable[[np.ndarray], np.ndarray]
    ) -> None:
        self.model(x_sample[:1])  # create the variables
        variables = self.model.trainable_variables
        self.optimizer.build(variables)  # create the slots now, so checkpoints see them
        self._variables = variables
        self._allreduce = allreduce_in_step
        self._steps = CompiledSteps(
            self.model, self.optimizer, self.loss_fn, variables, x_sample.shape[1:], self._in_graph
        )

    def _in_graph(self, flat: np.ndarray) -> np.ndarray:
        # TensorFlow turns an exception in a numpy_function into its own UnknownError; keep
        # the original (a CollectiveError: a peer died) for fused_step to raise.
        try:
            return self._allreduce(flat)
        except Exception as exc:
            self._step_error = exc
            raise

    # -- steps ---------------------------------------------------------------------------
    def gradients(self, x: np.ndarray, y: np.ndarray, global_batch: int) -> np.ndarray:
        return self._steps.gradients(
            tf.constant(x), tf.constant(y), tf.constant(1.0 / global_batch, tf.float32)
        ).numpy()

    def apply_gradients(self, gradients: np.ndarray) -> None:
        self._steps.apply(tf.constant(gradients))

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
        self._step_error = None
        try:
            return self._steps.fused(distributed, monitor)(
                tf.constant(x),
                tf.constant(y),
                self._scalar(1.0 / global_batch, tf.float32),
                self._scalar(local_scale_sq, tf.float32),
                self._scalar(extra_slots, tf.int32),
            ).numpy()
        except tf.errors.OpError as exc:
            error, self._step_error = self._step_error, None
            if error is not None:  # the collective failed: the update did not happen
                raise error from exc
            raise

    def _scalar(self, value: float, dtype):
        """A scalar tensor, kept for reuse: a step's scalars rarely change between steps."""
        key = (value, dtype)
        tensor = self._scalars.get(key)
        if tensor is None:
            if len(self._scalars) > 64:
                self._scalars.clear()
            tensor = self._scalars[key] = tf.constant(value, dtype)
        return tensor

    def checksum(self) -> float:
        return float(self._steps.checksum())

    # -- state as NumPy ------------------------------------------------------------------
    def weights(self) -> np.ndarray:
        return np.concatenate([np.asarray(v.numpy(), np.float32).ravel() for v in self._variables])

    def set_weights(self, flat: np.ndarray) -> None:
        offset = 0
        steps = self._steps
        for v, n, shape in zip(self._variables, steps.sizes, steps.shapes, strict=True):
            v.assign(flat[offset : offset + n].reshape(shape))
            offset += n

    def state(self) -> list[np.ndarray]:
        return [np.asarray(v.numpy()) for v in self._state_variables()]

    def load_state(self, arrays: list[np.ndarray]) -> None:
        for variable, value in zip(self._state_variables(), arrays, strict=True):
            variable.assign(value)

    def optimizer_state(self) -> list[np.ndarray]:
        return [np.asarray(v.numpy()) for v in self.optimizer.variables]

    def load_optimizer_state(self, arrays: list[np.ndarray]) -> None:
        for variable, value in zip(self.optimizer.variables, arrays, strict=True):
            variable.assign(value)

    def set_learning_rate(self, lr: float) -> None:
        self.optimizer.learning_rate.assign(lr)

    def _state_variables(self) -> list:
        return list(self.model.weights) + list(self.optimizer.variables)


class Trainer(trainer.Trainer):
    """Synchronous data-parallel (S-SGD) training of a Keras model with live knobs.

    ``loss_fn`` maps (labels, logits) to per-sample losses (use ``reduction="none"``).
    """

    def __init__(self, session: Session, model, optimizer, loss_fn, *, seed: int = 0):
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        super().__init__(session, KerasModel(model, optimizer, loss_fn), seed=seed)


def configure_tensorflow_threads(threads: int = 1) -> None:
    """Keep each worker to ``threads`` CPU threads so co-located workers do not fight."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


# -- building blocks for a custom training step ------------------------------------------
def broadcast_variables(variables, session: Session, root: int = 0) -> None:
    """Give every worker rank ``root``'s values of ``variables`` (call eagerly, once every
    worker created them: e.g. the model's and the optimizer's after a first build)."""
    comm = session.communicator
    if comm is None:
        return
    for group in _by_dtype(list(variables)).values():
        flat = np.concatenate([np.asarray(v.numpy()).ravel() for v in group])
        comm.broadcast(flat, root=root)
        offset = 0
        for v in group:
            n = int(np.prod(v.shape))
            v.assign(flat[offset : offset + n].reshape(v.shape))
            offset += n


def allreduce_gradients(gradients: list, session: Session, op: str = "mean") -> list:
    """Average (or sum, …) a list of gradient tensors across workers, fused into one
    native allreduce per dtype. Works eagerly and inside ``tf.function`` (the reduction
    runs as a ``tf.numpy_function``, with the GIL released during the transfer)."""
    if session.communicator is None:
        return list(gradients)
    out = list(gradients)
    groups: dict[str, list[int]] = {}
    for index, g in enumerate(gradients):
        groups.setdefault(g.dtype.name, []).append(index)

    def reduce(flat: np.ndarray) -> np.ndarray:
        flat = np.array(flat, copy=True)
        session.communicator.allreduce(flat, op=op)
        return flat

    for indices in groups.values():
        parts = [tf.reshape(gradients[i], [-1]) for i in indices]
        flat = tf.concat(parts, axis=0)
        reduced = tf.numpy_function(reduce, [flat], flat.dtype, stateful=True)
        reduced.set_shape(flat.shape)
        pieces = tf.split(reduced, [tf.size(p) for p in parts]) if len(parts) > 1 else [reduced]
        for i, piece in zip(indices, pieces, strict=True):
            out[i] = tf.reshape(piece, tf.shape(gradients[i]))
    return out


class DistributedOptimizer:
    """A Keras optimizer whose ``apply_gradients`` first averages the gradients across
    the job's workers (S-SGD), for scripts that write their own (``tf.function``)
    training step instead of using :class:`Trainer`::

        optimizer = runtime.DistributedOptimizer(keras.optimizers.SGD(0.05), session)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))

    Build the model and the optimizer, then call :func:`broadcast_variables` so every
    worker starts from rank 0's weights. Each worker feeds its own shard of the global
    batch (``GlobalBatchSampler.shard``) and computes the mean loss of its shard; with
    equal shards the averaged gradient is the global batch's. Live commands, elasticity
    and monitors are :class:`Trainer`'s; this wrapper only synchronises gradients.
    Every other attribute is the wrapped optimizer's."""

    def __init__(self, optimizer, session: Session):
        self._optimizer = optimizer
        self._session = session

    def apply_gradients(self, grads_and_vars):
        pairs = list(grads_and_vars)
        grads = allreduce_gradients([g for g, _ in pairs], self._session)
        return self._optimizer.apply_gradients(zip(grads, [v for _, v in pairs], strict=True))

    def __getattr__(self, name):
        return getattr(self._optimizer, name)


def _by_dtype(variables: list) -> dict[str, list]:
    groups: dict[str, list] = {}
    for v in variables:
        groups.setdefault(str(v.dtype), []).append(v)
    return groups


def evaluate_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    logits = model(np.asarray(x, np.float32), training=False)
    return float(np.mean(np.argmax(np.asarray(logits), axis=1) == y))
