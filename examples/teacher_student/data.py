"""The teacher–student data, made here and the same on every worker.

A fixed random *teacher* network (one tanh layer of 64) labels Gaussian inputs; a share
``label_noise`` of the training labels is replaced by a uniformly random class, so the
gradient stays noisy however well the student fits (the regime where a small batch wastes
less per sample and a large one steps faster: the trade-off adaptation is about). The
held-out labels are the teacher's own, so accuracy measures how well the student learned
the teacher, up to 1.0.
"""

from __future__ import annotations

import numpy as np

TEACHER_SEED = 20_231_203  # the teacher is the task: fixed, whatever the data seed


def teacher_labels(x: np.ndarray, classes: int) -> np.ndarray:
    rng = np.random.default_rng(TEACHER_SEED)
    features = x.shape[1]
    w1 = rng.normal(0.0, 1.0 / np.sqrt(features), size=(features, 64))
    w2 = rng.normal(0.0, 1.0 / np.sqrt(64), size=(64, classes))
    return np.argmax(np.tanh(x @ w1) @ w2, axis=1).astype(np.int32)


def make_data(
    samples: int = 120_000,
    *,
    features: int = 16,
    classes: int = 10,
    label_noise: float = 0.2,
    test_samples: int = 10_000,
    seed: int = 0,
):
    """((x_train, y_train), (x_test, y_test)): noisy training labels, clean test labels."""
    if samples < 1 or test_samples < 1 or not 0.0 <= label_noise < 1.0:
        raise ValueError("samples and test_samples must be ≥ 1 and label_noise in [0, 1)")
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, size=(samples + test_samples, features)).astype(np.float32)
    y = teacher_labels(x, classes)
    x_train, y_train = x[:samples], y[:samples].copy()
    flip = rng.random(samples) < label_noise
    y_train[flip] = rng.integers(0, classes, size=int(flip.sum()))
    return (x_train, y_train), (x[samples:], y[samples:])
