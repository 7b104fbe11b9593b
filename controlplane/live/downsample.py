"""Server-side downsampling of a metric series for charts (pure functions, no ORM).

Min/max bucketing: the series is cut into ``max_points // 2`` buckets by position and
each bucket keeps its lowest and highest point (in step order), so spikes survive
where plain striding would drop them. The last point is always kept, so a live chart
ends where the data does.
"""

from __future__ import annotations

from collections.abc import Sequence


def min_max_buckets(steps: Sequence[int], values: Sequence[float], max_points: int) -> list[int]:
    """Return the indices to keep, in order, at most ``max_points`` of them."""
    n = len(steps)
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    if n <= max_points:
        return list(range(n))
    buckets = max(1, (max_points - 1) // 2)
    keep: list[int] = []
    for b in range(buckets):
        lo = b * (n - 1) // buckets
        hi = (b + 1) * (n - 1) // buckets
        if hi <= lo:
            continue
        segment = range(lo, hi)
        i_min = min(segment, key=values.__getitem__)
        i_max = max(segment, key=values.__getitem__)
        keep.extend(sorted({i_min, i_max}))
    keep.append(n - 1)
    return keep
