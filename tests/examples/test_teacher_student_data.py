"""The teacher–student workload's data (examples.teacher_student.data): the same task for
every seed, the same data for the same seed, the asked share of noisy training labels,
and held-out labels that are the teacher's own."""

import numpy as np
import pytest

from examples.teacher_student.data import make_data, teacher_labels


def test_the_same_seed_makes_the_same_data_and_the_teacher_is_fixed():
    (x1, y1), (xt1, yt1) = make_data(2000, test_samples=500, seed=3)
    (x2, y2), _ = make_data(2000, test_samples=500, seed=3)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    (x3, _), (xt3, yt3) = make_data(2000, test_samples=500, seed=4)
    assert not np.array_equal(x1, x3)
    assert np.array_equal(teacher_labels(xt3, 10), yt3)  # another seed, the same teacher


def test_a_share_of_training_labels_is_noise_and_the_test_labels_are_clean():
    (x, y), (xt, yt) = make_data(20_000, test_samples=2000, label_noise=0.2, seed=0)
    wrong = np.mean(y != teacher_labels(x, 10))
    # A flipped label lands on the teacher's class one time in ten: 0.2 · 0.9 = 0.18.
    assert wrong == pytest.approx(0.18, abs=0.015)
    assert np.array_equal(yt, teacher_labels(xt, 10))
    assert len(np.unique(yt)) == 10


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="label_noise"):
        make_data(100, label_noise=1.0)
