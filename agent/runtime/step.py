"""The compiled TensorFlow steps of a Keras model, as :class:`agent.runtime.tf.KerasModel` runs them.

- ``gradients``: this worker's gradients fused into one flat buffer with the loss and
  correct-count sums and a slot for a squared norm (the two-call path: SMA, pair
  averaging, and S-SGD with ``fused_step`` off), and ``apply``: one update from such a
  buffer.
- the **fused S-SGD step** (:meth:`CompiledSteps.fused`): gradients, the allreduce (the
  native library called from the graph through ``tf.numpy_function``, with the command
  agreement riding in the same buffer), the update, and the squared norms the
  gradient-noise monitor needs — one call instead of two plus NumPy copies between
  them: on a small model that overhead is most of a step. It is called through its one
  concrete function: the polymorphic ``tf.function``'s per-call dispatch (binding,
  signature lookup) is most of a small model's step otherwise.
- ``checksum``: a sum of the weights, equal on workers with bit-identical models.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf


class CompiledSteps:
    """The compiled functions of one model, optimizer and loss; call them directly."""

    def __init__(
        self,
        model,
        optimizer,
        loss_fn,
        variables: list,
        feature_shape: tuple,
        allreduce_in_step: Callable[[np.ndarray], np.ndarray],
    ):
        self._model = model
        self._optimizer = optimizer
        self._loss_fn = loss_fn
        self._variables = variables
        # Each variable's element count and shape, in the flat buffers' order.
        self.sizes = [int(np.prod(v.shape)) for v in variables]
        self.shapes = [v.shape for v in variables]
        self._feature_shape = [None, *feature_shape]
        self._allreduce_in_step = allreduce_in_step
        self._fused: dict[tuple[bool, bool], Callable] = {}
        sizes, shapes = self.sizes, self.shapes

        @tf.function(
            input_signature=[
                tf.TensorSpec(self._feature_shape, tf.float32),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([], tf.float32),
            ]
        )
        def gradients(x, y, inv_global_batch):
            grads, loss_sum, correct = self._local_gradients(x, y, inv_global_batch)
            # Fuse every gradient and three scalars into one flat buffer: the loss and
            # correct-count sums, and a slot for this worker's squared local gradient norm
            # (filled in afterwards, only on monitoring steps).
            return tf.concat(
                [tf.reshape(g, [-1]) for g in grads]
                + [tf.reshape(loss_sum, [1]), tf.reshape(correct, [1]), tf.zeros([1])],
                axis=0,
            )

        @tf.function(input_signature=[tf.TensorSpec([sum(sizes)], tf.float32)])
        def apply(flat):
            parts = tf.split(flat, sizes)
            grads = [tf.reshape(p, s) for p, s in zip(parts, shapes, strict=True)]
            optimizer.apply_gradients(zip(grads, variables, strict=True))

        @tf.function(input_signature=[])
        def checksum():
            # Per-variable float32 sums added in float64: bit-identical weights give the
            # same value on every rank, and it costs a fraction of copying 8 MB of
            # weights out to NumPy first (0.6 ms vs 4.7 ms on synthetic_cnn).
            return tf.add_n([tf.cast(tf.reduce_sum(v), tf.float64) for v in variables])

        self.gradients = gradients
        self.apply = apply
        self.checksum = checksum

    def _local_gradients(self, x, y, inv_global_batch):
        """(Traced inside a compiled step.) This worker's gradients of the batch's summed
        loss scaled by ``inv_global_batch`` (1/B: summed over the workers they are the mean
        gradient), and the loss and correct-prediction sums of its samples."""
        with tf.GradientTape() as tape:
            logits = self._model(x, training=True)
            loss_sum = tf.reduce_sum(self._loss_fn(y, logits))
            scaled = loss_sum * inv_global_batch
        grads = tape.gradient(scaled, self._variables)
        grads = [
            tf.zeros_like(v) if g is None else g
            for g, v in zip(grads, self._variables, strict=True)
        ]
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), tf.float32)
        )
        return grads, loss_sum, correct

    def fused(self, distributed: bool, monitor: bool) -> Callable:
        """S-SGD's one-call step, traced once per variant: with the allreduce or without (one
        worker), with the monitors' norms or without. Takes (x, y, 1/B, local_scale²,
        agreement slots) and returns [loss sum, correct count, the workers' summed squared
        local gradient norms, squared norm of the averaged gradient]; the norms are 0
        unless ``monitor``."""
        if (distributed, monitor) in self._fused:
            return self._fused[distributed, monitor]
        variables, optimizer = self._variables, self._optimizer
        sizes, shapes = self.sizes, self.shapes
        allreduce_in_step = self._allreduce_in_step

        @tf.function(
            input_signature=[
                tf.TensorSpec(self._feature_shape, tf.float32),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([], tf.int32),
            ]
        )
        def step(x, y, inv_global_batch, local_scale_sq, agree_slots):
            grads, loss_sum, correct = self._local_gradients(x, y, inv_global_batch)
            # This worker's own mean gradient is B/n times its share (scaled by 1/B).
            # The monitors' two squared norms cost a pass over the gradients: only in the
            # variant that monitors (a graph branch would cost more than the norms on a small model).
            # (2 * l2_loss is the sum of squares in one fused pass, half the time of
            # square-then-sum, which writes a temporary as large as the model.)
            local_sq = (
                tf.add_n([2.0 * tf.nn.l2_loss(g) for g in grads]) * local_scale_sq
                if monitor
                else tf.constant(0.0)
            )
            # Room for the command agreement at the end (see Agreement.allreduce_in_step),
            # so the allreduce works on this buffer in place.
            flat = tf.concat(
                [tf.reshape(g, [-1]) for g in grads]
                + [
                    tf.reshape(loss_sum, [1]),
                    tf.reshape(correct, [1]),
                    tf.reshape(local_sq, [1]),
                    tf.zeros([agree_slots]),
                ],
                axis=0,
            )
            if distributed:
                flat = tf.ensure_shape(
                    tf.numpy_function(allreduce_in_step, [flat], tf.float32, stateful=True),
                    flat.shape,
                )
            # Split the whole buffer (a slice first would cost a copy of the model).
            *parts, tail = tf.split(flat, [*sizes, -1])
            averaged = [tf.reshape(p, s) for p, s in zip(parts, shapes, strict=True)]
            optimizer.apply_gradients(zip(averaged, variables, strict=True))
            big_sq = (
                tf.add_n([2.0 * tf.nn.l2_loss(g) for g in averaged])
                if monitor
                else tf.constant(0.0)
            )
            return tf.concat([tail[:3], tf.reshape(big_sq, [1])], axis=0)

        self._fused[distributed, monitor] = step.get_concrete_function()
        return self._fused[distributed, monitor]
