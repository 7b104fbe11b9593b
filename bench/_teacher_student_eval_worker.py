"""The teacher–student example with held-out accuracy in its reports, for ``bench.adaptive_outcome``.

The same data, model, optimizer and runtime as ``examples.teacher_student.train``; it
differs in what rank 0 reports and in how long it runs. Each whole-job report of rank 0
gains ``samples`` (the global samples trained on after the first step, counted step by
step at the batch size in force), ``clock_start`` (when the first step ended: it traces
the model's step function and broadcasts the weights, the same for every run, so the
benchmark's clock starts there) and ``eval_s`` (seconds spent evaluating so far, so the
benchmark can take them out of the training time); each time ``samples`` has passed another
``eval_every_samples`` (hyper-parameter, default 10000) the report also carries
``val_accuracy`` on the held-out set (the teacher's own labels). The run lasts until
``steps`` or until the benchmark sends ``stop`` (it does at its sample budget), so a
batch-size change does not change how much data a run sees. The runtime is unchanged:
only this one session object's ``report`` is wrapped.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from agent import runtime  # noqa: E402
from examples.teacher_student.data import make_data  # noqa: E402
from examples.teacher_student.train import build_model  # noqa: E402


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
    eval_every = max(1, int(hp.get("eval_every_samples", 10_000)))

    if session.rank == 0:
        report = session.report
        state = {"samples": 0, "eval_s": 0.0, "next_eval": eval_every, "clock_start": None}

        def count(step: int, epoch: int, mine) -> None:
            if state["clock_start"] is None:
                state["clock_start"] = time.time()
            else:
                state["samples"] += trainer.batch_size

        def report_with_accuracy(
            metrics: dict[str, float], *, step: int, per_rank: bool = False
        ) -> None:
            if not per_rank and "loss" in metrics:
                metrics = {**metrics, "samples": float(state["samples"])}
                if state["samples"] >= state["next_eval"]:
                    while state["next_eval"] <= state["samples"]:
                        state["next_eval"] += eval_every
                    t0 = time.perf_counter()
                    metrics["val_accuracy"] = runtime.evaluate_accuracy(model, x_test, y_test)
                    state["eval_s"] += time.perf_counter() - t0
                metrics["eval_s"] = state["eval_s"]
                metrics["clock_start"] = state["clock_start"]
            report(metrics, step=step, per_rank=per_rank)

        trainer.on_batch = count
        session.report = report_with_accuracy  # type: ignore[method-assign]

    trainer.fit(
        x_train,
        y_train,
        steps=int(hp.get("steps", 1_000_000)),
        log_every=int(hp.get("log_every", 5)),
        monitor_every=int(hp.get("monitor_every", 1)),
    )


if __name__ == "__main__":
    main()
