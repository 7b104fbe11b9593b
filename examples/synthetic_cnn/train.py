"""Train a small CNN (about 2.2 M parameters) on generated 32×32×3 images.

The data is made here, deterministically: each of 10 classes is a fixed random
pattern plus noise, so the model has something to learn and throughput figures come
from real convolutions. Hyper-parameters: ``batch_size`` (global), ``lr``, ``steps``,
``log_every``, ``seed``, ``samples`` (default 4096).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from agent import runtime  # noqa: E402


def make_data(samples: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    patterns = rng.normal(0.0, 1.0, size=(10, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=samples).astype(np.int32)
    x = patterns[y] + rng.normal(0.0, 1.5, size=(samples, 32, 32, 3)).astype(np.float32)
    return x, y


def build_model(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(shape=(32, 32, 3)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(128, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def main() -> None:
    runtime.configure_tensorflow_threads(1)
    import keras

    session = runtime.init()
    hp = session.hyperparameters
    seed = int(hp.get("seed", 0))
    x, y = make_data(int(hp.get("samples", 4096)), seed)
    model = build_model(seed)
    optimizer = keras.optimizers.SGD(learning_rate=session.lr, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    trainer = runtime.Trainer(session, model, optimizer, loss_fn, seed=seed)
    trainer.fit(
        x,
        y,
        steps=int(hp.get("steps", 200)),
        log_every=int(hp.get("log_every", 10)),
        monitor_every=int(hp.get("monitor_every", 1)),
        resume_from=hp.get("resume_from"),
    )
    if session.rank == 0:
        print(f"{model.count_params()} parameters; finished at step {trainer.step}", flush=True)


if __name__ == "__main__":
    main()
