"""The framework-neutral trainer on a model that is no framework at all: softmax
regression in NumPy behind the ModelAdapter interface, two workers as two threads of this
process over the real native library. S-SGD follows single-process training on the same
global batch, and a strategy switch (SMA → S-SGD) by command makes the models identical
— what a PyTorch edge gets from the core by implementing the same interface."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from agent.local import free_port
from agent.protocol.worker import CommandLine
from agent.runtime.session import Session
from agent.runtime.trainer import Trainer

N_FEATURES, N_CLASSES = 8, 3


class NumpySoftmax:
    """Softmax regression trained by SGD with momentum (as Keras' SGD updates), in NumPy."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.w = rng.normal(0.0, 0.1, (N_FEATURES, N_CLASSES)).astype(np.float32)
        self.b = np.zeros(N_CLASSES, np.float32)
        self.velocity = np.zeros(self.w.size + self.b.size, np.float32)
        self.iterations = np.zeros((), np.int64)
        self.lr = np.float32(0.1)

    def build(self, x_sample, allreduce_in_step):
        self._allreduce = allreduce_in_step

    def gradients(self, x, y, global_batch):
        logits = x @ self.w + self.b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        rows = np.arange(len(y))
        loss_sum = -np.log(p[rows, y]).sum()
        correct = (p.argmax(axis=1) == y).sum()
        p[rows, y] -= 1.0
        p /= global_batch
        grads = [(x.T @ p).ravel(), p.sum(axis=0)]
        return np.concatenate([*grads, [loss_sum, correct, 0.0]]).astype(np.float32)

    def apply_gradients(self, gradients):
        self.velocity = 0.9 * self.velocity - self.lr * gradients
        self.set_weights(self.weights() + self.velocity)
        self.iterations += 1

    def fused_step(self, x, y, global_batch, local_scale_sq, extra_slots, monitor, distributed):
        flat = self.gradients(x, y, global_batch)
        n = flat.size - 3
        if monitor:
            flat[-1] = np.dot(flat[:n], flat[:n]) * local_scale_sq
        flat = np.concatenate([flat, np.zeros(extra_slots, np.float32)])
        if distributed:
            flat = self._allreduce(flat)
        self.apply_gradients(flat[:n])
        big_sq = np.dot(flat[:n], flat[:n]) if monitor else 0.0
        return np.array([*flat[n : n + 3], big_sq], np.float32)

    def weights(self):
        return np.concatenate([self.w.ravel(), self.b])

    def set_weights(self, flat):
        self.w = flat[: self.w.size].reshape(self.w.shape).astype(np.float32)
        self.b = flat[self.w.size :].astype(np.float32)

    def state(self):
        return [self.w.copy(), self.b.copy(), *self.optimizer_state()]

    def load_state(self, arrays):
        self.w, self.b = arrays[0].copy(), arrays[1].copy()
        self.load_optimizer_state(arrays[2:])

    def optimizer_state(self):
        return [self.velocity.copy(), self.iterations.copy()]

    def load_optimizer_state(self, arrays):
        self.velocity, self.iterations = arrays[0].copy(), arrays[1].copy()

    def set_learning_rate(self, lr):
        self.lr = np.float32(lr)

    def checksum(self):
        return float(np.sum(self.w, dtype=np.float64) + np.sum(self.b, dtype=np.float64))


def blobs(n: int = 600):
    rng = np.random.default_rng(1)
    y = rng.integers(N_CLASSES, size=n).astype(np.int32)
    centres = rng.normal(0.0, 2.0, (N_CLASSES, N_FEATURES))
    return (centres[y] + rng.normal(0.0, 1.0, (n, N_FEATURES))).astype(np.float32), y


def train(workers: int, params: dict, *, steps: int, on_step=None) -> list[list[dict]]:
    """Train ``workers`` NumPy models (threads); returns every worker's messages to the agent."""
    x, y = blobs()
    peers = [f"127.0.0.1:{free_port()}" for _ in range(workers)]
    sent: list[list[dict]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        try:
            session = Session(
                job=1,
                rank=rank,
                size=workers,
                peers=peers,
                params=params,
                first_seq=0,
                address=peers[rank],
            )
            session.send = lambda line, r=rank: sent[r].append(line.to_dict())  # type: ignore[method-assign]
            if workers > 1:
                session.membership.form_communicator(0, peers)
            trainer = Trainer(session, NumpySoftmax(seed=rank), seed=0)
            if on_step is not None:
                trainer.on_batch = lambda step, epoch, samples: on_step(session, step)
            trainer.fit(x, y, steps=steps, log_every=10)
            session.membership.close_communicator()
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a worker thread did not finish"
    if errors:
        raise errors[0]
    return sent


def series(messages: list[dict], name: str) -> dict[int, float]:
    return {
        p["step"]: p["value"]
        for m in messages
        if m["type"] == "metrics"
        for p in m["points"]
        if p["name"] == name
    }


@pytest.fixture(autouse=True)
def _collective_timeout(monkeypatch):
    monkeypatch.setenv("COLLECTIVE_TIMEOUT", "60")


def test_two_numpy_workers_follow_single_process_training_on_the_same_global_batch():
    params = {"hyperparameters": {"batch_size": 64, "lr": 0.1}}
    single = train(1, params, steps=50)
    double = train(2, params, steps=50)
    losses = series(single[0], "loss"), series(double[0], "loss")
    assert sorted(losses[0]) == sorted(losses[1]) == [10, 20, 30, 40, 50]
    for step, loss in losses[0].items():
        assert losses[1][step] == pytest.approx(loss, rel=1e-3), step
    assert losses[0][50] < 0.5 * losses[0][10]
    # Different initial weights (seeded by rank): rank 0's were broadcast.
    sums = [series(double[r], "param_checksum") for r in (0, 1)]
    assert sums[0] == sums[1]
    assert series(double[0], "gns")  # the fused step fed the gradient-noise monitor


def test_switching_a_numpy_job_from_sma_to_ssgd_makes_the_models_identical():
    switch = CommandLine(id=7, seq=1, action="set_strategy", payload={"value": "ssgd"})

    def on_step(session: Session, step: int) -> None:
        if step == 20:  # every worker receives it after step 20: applied at step 21's boundary
            session.commands.receive(switch)

    params = {"hyperparameters": {"batch_size": 64, "lr": 0.1, "sma_alpha": 0.1}, "strategy": "sma"}
    sent = train(2, params, steps=60, on_step=on_step)
    applied = [[m for m in sent[r] if m["type"] == "applied"] for r in (0, 1)]
    assert [a["step"] for a in applied[0]] == [a["step"] for a in applied[1]] == [21]
    sums = [series(sent[r], "param_checksum") for r in (0, 1)]
    assert sums[0][20] != sums[1][20]  # SMA pulls the models together but not all the way
    assert all(sums[0][s] == sums[1][s] for s in (30, 40, 50, 60))
