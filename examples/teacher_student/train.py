"""Train a student MLP on the teacher–student task with the adaptive runtime.

Run by the agent as ``python -m examples.teacher_student.train`` (one process per worker).
Hyper-parameters come from the job: ``batch_size`` (global), ``lr``, ``steps``,
``log_every``, ``seed``, ``samples`` (training set size, default 120000) and
``label_noise`` (default 0.2). Rank 0 reports ``val_accuracy`` on the teacher's own
labels every ``eval_every`` steps (default 200) and at the end.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from agent import runtime  # noqa: E402
from examples.teacher_student.data import make_data  # noqa: E402


def build_model(features: int, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(shape=(features,)),
            keras.layers.Dense(256, activation="relu"),
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
    (x_train, y_train), (x_test, y_test) = make_data(
        int(hp.get("samples", 120_000)), label_noise=float(hp.get("label_noise", 0.2)), seed=seed
    )
    model = build_model(x_train.shape[1], seed)
    optimizer = keras.optimizers.SGD(learning_rate=session.lr, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    trainer = runtime.Trainer(session, model, optimizer, loss_fn, seed=seed)
    steps, eval_every = int(hp.get("steps", 2000)), max(1, int(hp.get("eval_every", 200)))
    while trainer.step < steps and not trainer.stopped:
        trainer.fit(
            x_train,
            y_train,
            steps=min(steps, trainer.step + eval_every),
            log_every=int(hp.get("log_every", 10)),
            monitor_every=int(hp.get("monitor_every", 1)),
            resume_from=hp.get("resume_from") if trainer.step == 0 else None,
        )
        if session.rank == 0:
            accuracy = runtime.evaluate_accuracy(model, x_test, y_test)
            session.report({"val_accuracy": accuracy}, step=trainer.step)
    if session.rank == 0:
        print(f"held-out accuracy after {trainer.step} steps: {accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
