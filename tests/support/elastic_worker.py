"""The digits example as a worker that also records which samples it trained on.

Each trained step appends ``{"step", "epoch", "version", "rank", "size", "samples"}``
to ``$ELASTIC_LOG_DIR/<address>.jsonl`` so that tests can check data coverage and
lock-step across resizes. Everything else is the public runtime API.
"""

from __future__ import annotations

import json
import os

from agent import runtime
from examples.digits.train import build_model, load_data


def record_batches(trainer, session):
    """Append a record of each step ``trainer`` trains to this worker's log; returns the file."""
    path = os.path.join(os.environ["ELASTIC_LOG_DIR"], session.address.replace(":", "_") + ".jsonl")
    log = open(path, "a", buffering=1)

    def on_batch(step, epoch, samples):
        log.write(
            json.dumps(
                {
                    "step": step,
                    "epoch": epoch,
                    "version": session.cluster_version,
                    "rank": session.rank,
                    "size": session.size,
                    "samples": [int(i) for i in samples],
                }
            )
            + "\n"
        )

    trainer.on_batch = on_batch
    return log


def main() -> None:
    runtime.configure_tensorflow_threads(1)
    import keras

    session = runtime.init()
    hp = session.hyperparameters
    (x_train, y_train), _ = load_data(0)
    model = build_model(0)
    optimizer = keras.optimizers.SGD(learning_rate=session.lr, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    trainer = runtime.Trainer(session, model, optimizer, loss_fn, seed=0)
    log = record_batches(trainer, session)
    trainer.fit(
        x_train,
        y_train,
        steps=int(hp["steps"]),
        log_every=int(hp.get("log_every", 5)),
        monitor_every=0,
    )
    log.close()


if __name__ == "__main__":
    main()
