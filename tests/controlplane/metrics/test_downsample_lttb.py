"""Largest-Triangle-Three-Buckets keeps the ends and the shape, and returns exactly max_points."""

import math

import pytest

from controlplane.metrics.downsample import downsample_indices, largest_triangle_three_buckets


def test_first_and_last_points_are_kept():
    n = 1000
    keep = largest_triangle_three_buckets(list(range(n)), [math.sin(i / 20) for i in range(n)], 50)
    assert keep[0] == 0 and keep[-1] == n - 1


@pytest.mark.parametrize(
    "n, max_points", [(1000, 50), (1000, 3), (1001, 999), (10, 9), (7, 4), (100_000, 1000)]
)
def test_exactly_max_points_distinct_indices_in_order_are_returned(n, max_points):
    keep = largest_triangle_three_buckets(
        list(range(n)), [float(i % 17) for i in range(n)], max_points
    )
    assert len(keep) == max_points
    assert keep == sorted(set(keep))
    assert 0 <= keep[0] and keep[-1] < n


def test_an_obvious_spike_is_picked():
    n = 10_000
    values = [1.0] * n
    values[4321] = 99.0
    values[7000] = -50.0
    keep = largest_triangle_three_buckets(list(range(n)), values, 100)
    assert 4321 in keep and 7000 in keep


def test_the_turning_points_of_a_triangle_wave_survive():
    # Up from 0 to 500, down to 1000, up to 1500: the two corners are the obvious choices.
    values = [float(i if i <= 500 else 1000 - i if i <= 1000 else i - 1000) for i in range(1501)]
    keep = largest_triangle_three_buckets(list(range(1501)), values, 30)
    assert 500 in keep and 1000 in keep


def test_uneven_steps_are_used_as_x_coordinates():
    steps = [i * i for i in range(500)]
    keep = largest_triangle_three_buckets(steps, [float(i % 5) for i in range(500)], 20)
    assert len(keep) == 20 and keep[0] == 0 and keep[-1] == 499


@pytest.mark.parametrize("n", [0, 1, 2, 5, 10])
def test_a_series_no_longer_than_max_points_is_kept_whole(n):
    assert largest_triangle_three_buckets(list(range(n)), [float(i) for i in range(n)], 10) == list(
        range(n)
    )


def test_two_points_keep_just_the_ends():
    assert largest_triangle_three_buckets(list(range(100)), [float(i) for i in range(100)], 2) == [
        0,
        99,
    ]


@pytest.mark.parametrize("max_points", [1, 0, -3])
def test_fewer_than_two_points_is_rejected(max_points):
    with pytest.raises(ValueError, match="at least 2"):
        largest_triangle_three_buckets([1, 2, 3], [1.0, 2.0, 3.0], max_points)


def test_constant_series_still_returns_max_points():
    keep = largest_triangle_three_buckets(list(range(300)), [2.5] * 300, 10)
    assert len(keep) == 10 and keep[0] == 0 and keep[-1] == 299


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="same length"):
        largest_triangle_three_buckets([1, 2, 3], [1.0, 2.0], 2)


def test_methods_are_chosen_by_name_and_unknown_names_are_rejected():
    steps, values = list(range(100)), [float(i % 7) for i in range(100)]
    assert downsample_indices("lttb", steps, values, 10) == largest_triangle_three_buckets(
        steps, values, 10
    )
    assert len(downsample_indices("minmax", steps, values, 10)) <= 10
    with pytest.raises(ValueError, match="unknown downsampling method"):
        downsample_indices("average", steps, values, 10)
