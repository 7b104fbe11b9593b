"""A worker with its own ``tf.function`` training step, synchronised only through the
runtime's public building blocks (DistributedOptimizer, broadcast_variables,
GlobalBatchSampler); reports the loss and a checksum of its weights every 10 steps."""

from __future__ import annotations

import numpy as np

from agent import runtime
from examples.digits.train import build_model, load_data


def main() -> None:
    runtime.configure_tensorflow_threads(1)
    import keras
    import tensorflow as tf

    session = runtime.init()
    hp = session.hyperparameters
    (x, y), _ = load_data(0)
    # A different seed per worker: broadcast_variables must make them equal.
    model = build_model(seed=100 + max(session.rank, 0))
    optimizer = runtime.DistributedOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), session)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model(x[:1])
    optimizer.build(model.trainable_variables)
    runtime.broadcast_variables(model.weights, session)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    sampler = runtime.GlobalBatchSampler(len(x), seed=0)
    for i in range(int(hp["steps"])):
        mine = runtime.GlobalBatchSampler.shard(sampler.next(64), session.rank, session.size)
        loss = float(step(tf.constant(x[mine]), tf.constant(y[mine])))
        if (i + 1) % 10 == 0:
            checksum = float(np.sum([np.sum(w.numpy(), dtype=np.float64) for w in model.weights]))
            session.report({"loss": loss, "param_checksum": checksum}, step=i + 1, per_rank=True)


if __name__ == "__main__":
    main()
