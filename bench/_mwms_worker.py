"""One worker of the reference systems that ``bench.training`` compares against.

- ``--system tf_mwms``: TensorFlow's own ``tf.distribute.MultiWorkerMirroredStrategy``
  (one process per worker, cluster from ``TF_CONFIG``, CPU collectives over gRPC, one
  replica per worker). A Keras custom training loop: every worker computes the
  gradient of ``sum(loss) / global_batch`` over its share of the global batch inside
  ``strategy.run`` and the Keras optimizer sums the gradients across workers before
  applying them — the same arithmetic as our S-SGD.
- ``--system plain``: one process, no distribution, the whole global batch per step,
  compute and update in one ``tf.function``; the whole-machine reference.

Model, data, optimizer (SGD, momentum 0.9) and batch sampling (a permutation per
epoch, worker *r* takes every *n*-th sample of the global batch) are those of the
examples and of ``agent.runtime``. Rank 0 prints one JSON line with every step's wall
time (the loss is read back each step, so a step's time includes its collective).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def load(model: str, seed: int, samples: int):
    """(x_train, y_train, model builder) for an example, with the example's own code."""
    if model == "synthetic_cnn":
        from examples.synthetic_cnn.train import build_model, make_data

        x, y = make_data(samples, seed)
        return x, y, build_model
    if model == "digits":
        from examples.digits.train import build_model, load_data

        (x, y), _ = load_data(seed)
        return x, y, build_model
    raise SystemExit(f"unknown model {model!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=("tf_mwms", "plain"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--global-batch", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="intra- and inter-op threads")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras

    x, y, build_model = load(args.model, args.seed, args.samples)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    if args.system == "tf_mwms":
        cluster = json.loads(os.environ["TF_CONFIG"])
        rank, size = cluster["task"]["index"], len(cluster["cluster"]["worker"])
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        with strategy.scope():
            model = build_model(args.seed)
            optimizer = keras.optimizers.SGD(learning_rate=args.lr, momentum=0.9)
            model(x[:1])
            optimizer.build(model.trainable_variables)

        def replica_step(xb, yb, inv_global):
            with tf.GradientTape() as tape:
                loss_sum = tf.reduce_sum(loss_fn(yb, model(xb, training=True)))
                scaled = loss_sum * inv_global
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss_sum

        @tf.function
        def train_step(xb, yb, inv_global):
            per_replica = strategy.run(replica_step, args=(xb, yb, inv_global))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    else:
        rank, size = 0, 1
        model = build_model(args.seed)
        optimizer = keras.optimizers.SGD(learning_rate=args.lr, momentum=0.9)

        @tf.function
        def train_step(xb, yb, inv_global):
            with tf.GradientTape() as tape:
                loss_sum = tf.reduce_sum(loss_fn(yb, model(xb, training=True)))
                scaled = loss_sum * inv_global
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss_sum

    # The runtime's sampling: a permutation per epoch (the same on every worker), batches
    # never cross an epoch boundary, worker r takes every size-th sample from offset r.
    n, epoch, position = len(x), 0, 0
    perm = np.random.default_rng(args.seed).permutation(n)
    times, losses = [], []
    for _ in range(args.steps):
        if position >= n:
            epoch, position = epoch + 1, 0
            perm = np.random.default_rng(args.seed + epoch).permutation(n)
        batch = perm[position : min(position + args.global_batch, n)]
        position += len(batch)
        mine = batch[rank::size]
        t0 = time.perf_counter()
        loss = float(
            train_step(
                tf.constant(x[mine]),
                tf.constant(y[mine]),
                tf.constant(1.0 / len(batch), tf.float32),
            )
        )
        times.append(time.perf_counter() - t0)
        losses.append(loss / len(batch))
    checksum = float(
        sum(np.sum(np.asarray(v.numpy(), np.float64)) for v in model.trainable_variables)
    )
    if rank == 0:
        print(
            json.dumps(
                {
                    "step_times": times,
                    "loss_first": losses[0],
                    "loss_last": losses[-1],
                    "param_checksum": checksum,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
