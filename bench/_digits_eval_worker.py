"""The digits example with test accuracy in every report, for ``bench.adaptive_batch``.

Identical to ``examples.digits.train`` (same data split, model, optimizer and runtime)
except that rank 0, each time the runtime reports its whole-job metrics, first
evaluates the model on the held-out test set and adds two values to the report:
``test_accuracy`` and ``eval_s`` (the seconds spent evaluating so far, so the
benchmark can take them out of the training time). The runtime itself is unchanged:
its ``Session.report`` is wrapped on this one session object.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from agent import runtime  # noqa: E402
from examples.digits.train import build_model, load_data  # noqa: E402


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

    if session.rank == 0:
        report = session.report
        eval_s = 0.0

        def report_with_test_accuracy(
            metrics: dict[str, float], *, step: int, per_rank: bool = False
        ) -> None:
            nonlocal eval_s
            if not per_rank and "loss" in metrics:
                t0 = time.perf_counter()
                accuracy = runtime.evaluate_accuracy(model, x_test, y_test)
                eval_s += time.perf_counter() - t0
                metrics = {**metrics, "test_accuracy": accuracy, "eval_s": eval_s}
            report(metrics, step=step, per_rank=per_rank)

        session.report = report_with_test_accuracy  # type: ignore[method-assign]

    trainer.fit(
        x_train,
        y_train,
        steps=int(hp.get("steps", 1000)),
        log_every=int(hp.get("log_every", 10)),
        monitor_every=int(hp.get("monitor_every", 1)),
    )


if __name__ == "__main__":
    main()
