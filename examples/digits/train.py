"""Train a small dense network on scikit-learn's digits with the adaptive runtime.

Run by the agent as ``python -m examples.digits.train`` (one process per worker), or
alone for a single-process baseline. Hyper-parameters come from the job: ``batch_size``
(global), ``lr``, ``steps``, ``log_every``, ``seed``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from agent import runtime  # noqa: E402


def load_data(seed: int = 0):
    """Digits scaled to [0, 1], split 80/20 with a fixed shuffle (the same on every worker)."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def build_model(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def main() -> None:
    runtime.configure_tensorflow_threads(1)
    import keras

    session = runtime.init()
    hp = session.hyperparameters
    seed = int(hp.get("seed", 0))
    (x_train, y_train), (x_test, y_test) = load_data(seed)
    model = build_model(seed)
    optimizer = keras.optimizers.SGD(learning_rate=session.lr, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    trainer = runtime.Trainer(session, model, optimizer, loss_fn, seed=seed)
    trainer.fit(
        x_train,
        y_train,
        steps=int(hp.get("steps", 1000)),
        log_every=int(hp.get("log_every", 10)),
        monitor_every=int(hp.get("monitor_every", 1)),
        resume_from=hp.get("resume_from"),
    )
    if session.rank == 0:
        accuracy = runtime.evaluate_accuracy(model, x_test, y_test)
        session.report({"val_accuracy": accuracy}, step=trainer.step)
        print(f"test accuracy after {trainer.step} steps: {accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
