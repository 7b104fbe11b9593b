"""bench.ring_routing on a bandwidth-bound emulated network (--link-rate): three phases,
and with one path slowed the routed ring leaves that path out and outruns the ring in rank
order. Needs root, ip and tc (network namespaces); skipped with the reason otherwise."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import netns
from bench.ring_routing import ROOT

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))


def test_bandwidth_bound_phases_and_the_routed_ring_avoids_the_slow_path() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.ring_routing", "--json", "--nodes", "4",
         "--link-rate", "400mbit", "--slow-rate", "20mbit", "--sizes", "290K",
         "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    ).stdout  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["phase"] for r in rows] == [
        "every link at 400mbit",
        "every link at 400mbit, path 1-2 at 20mbit",
        "every link at 400mbit, node 3's link at 20mbit",
    ]
    assert all(r["link_rate"] == "400mbit" for r in rows)
    slow_path = rows[1]
    order = slow_path["order"]
    hops = {frozenset((order[i], order[(i + 1) % 4])) for i in range(4)}
    assert frozenset((1, 2)) not in hops, order
    # 387 KB through the 2.5 MB/s path take ≥ 0.15 s; around it, a few ms.
    assert slow_path["ring_290K_s"] > 0.1
    assert slow_path["routed_ring_290K_s"] < slow_path["ring_290K_s"] / 3
