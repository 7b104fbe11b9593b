"""Server-side downsampling of a metric series for charts (pure functions, no ORM).

Two methods, both returning the indices to keep (in step order, first and last point
always kept, so a live chart ends where the data does):

- **Min/max buckets** (``minmax``, the default): the series is cut into
  ``max_points // 2`` buckets by position and each bucket keeps its lowest and highest
  point, so spikes survive where plain striding would drop them. Cheap, exact
  extremes, but a flat stretch still costs two points per bucket.
- **Largest-Triangle-Three-Buckets** (``lttb``; Steinarsson 2013, "Downsampling Time
  Series for Visual Representation", ch. 4): one point per bucket, the one that makes
  the largest triangle with the point kept in the previous bucket and the mean of the
  next bucket. It keeps the visual shape of a line (turning points, spikes) with half
  as many points per bucket as min/max and returns exactly ``max_points`` points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

DOWNSAMPLE_METHODS = ("minmax", "lttb")
DEFAULT_DOWNSAMPLE = "minmax"


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


def largest_triangle_three_buckets(
    steps: Sequence[float], values: Sequence[float], max_points: int
) -> list[int]:
    """Return exactly ``min(len(steps), max_points)`` indices to keep, in order (LTTB).

    The first and last points are kept; the ``n - 2`` points between them are cut into
    ``max_points - 2`` buckets of (nearly) equal length, and from each bucket the point
    forming the largest triangle with the previously kept point and the centroid of
    the next bucket is kept. ``steps`` are the x coordinates (need not be evenly
    spaced); values must be finite.
    """
    n = len(steps)
    if len(values) != n:
        raise ValueError("steps and values must have the same length")
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    if n <= max_points:
        return list(range(n))
    if max_points == 2:
        return [0, n - 1]
    inner = max_points - 2

    # Bucket b covers indices [edge(b), edge(b + 1)) of the inner points 1 … n-2;
    # the last point, alone, is the "bucket" after the final one.
    def edge(b: int) -> int:
        return 1 + b * (n - 2) // inner

    keep = [0]
    a = 0  # the point kept from the previous bucket
    for b in range(inner):
        lo, hi = edge(b), edge(b + 1)
        nlo, nhi = (edge(b + 1), edge(b + 2)) if b + 1 < inner else (n - 1, n)
        count = nhi - nlo
        cx = sum(float(steps[i]) for i in range(nlo, nhi)) / count
        cy = sum(float(values[i]) for i in range(nlo, nhi)) / count
        ax, ay = float(steps[a]), float(values[a])
        best, best_area = lo, -1.0
        for i in range(lo, hi):
            # Twice the triangle's area; the constant factor does not change the argmax.
            area = abs((ax - cx) * (float(values[i]) - ay) - (ax - float(steps[i])) * (cy - ay))
            if area > best_area:
                best, best_area = i, area
        keep.append(best)
        a = best
    keep.append(n - 1)
    return keep


_METHODS: dict[str, Callable[[Sequence[int], Sequence[float], int], list[int]]] = {
    "minmax": min_max_buckets,
    "lttb": largest_triangle_three_buckets,
}


def downsample_indices(
    method: str, steps: Sequence[int], values: Sequence[float], max_points: int
) -> list[int]:
    """Indices to keep with the named method (one of ``DOWNSAMPLE_METHODS``)."""
    try:
        function = _METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown downsampling method {method!r}; use one of {', '.join(DOWNSAMPLE_METHODS)}"
        ) from None
    return function(steps, values, max_points)
