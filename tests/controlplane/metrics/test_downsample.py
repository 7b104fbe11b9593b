"""Min/max bucketing keeps spikes and the last point, and never exceeds max_points."""

import pytest

from controlplane.metrics.downsample import min_max_buckets


def test_short_series_is_kept_whole():
    assert min_max_buckets([1, 2, 3], [1.0, 2.0, 3.0], 10) == [0, 1, 2]


def test_long_series_is_reduced_but_keeps_spike_and_last_point():
    n = 10_000
    values = [0.0] * n
    values[4321] = 99.0
    keep = min_max_buckets(list(range(n)), values, 100)
    assert len(keep) <= 100
    assert 4321 in keep
    assert keep[-1] == n - 1
    assert keep == sorted(keep)


def test_max_points_below_two_is_rejected():
    with pytest.raises(ValueError):
        min_max_buckets([1, 2, 3], [1, 2, 3], 1)
