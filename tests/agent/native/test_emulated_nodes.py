"""Emulated nodes with real kernel networking (bench/netns.py): one network namespace per node.

Two namespaces joined by a bridge, each link shaped to 200 Mbit/s with tc:
the measured ceiling must respect the shaping, and a 2 × 2 job (ranks of a
node share its address and memory) runs the hierarchical allreduce across
them through bench.allreduce's per-rank entry point. Needs root, ip and tc;
skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import netns

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))


def test_a_shaped_link_between_namespaces_carries_the_hierarchical_allreduce() -> None:
    with netns.EmulatedNodes(2, rate="200mbit") as nodes:
        ceiling = netns.link_ceiling(nodes, streams=1, nbytes=16 << 20)
        # 200 Mbit/s is 25 MB/s; a token bucket lets a burst through, TCP loses a little.
        assert 10e6 < ceiling < 27e6, ceiling
        peers = [
            f"{nodes.address(node)}:{29500 + local}" for node in range(2) for local in range(2)
        ]
        procs = []
        for rank in range(4):
            argv = [sys.executable, "-m", "bench.allreduce", "--serve-rank", str(rank)]
            argv += ["--peers", ",".join(peers), "--sizes", "1M", "--repeats", "2"]
            argv += ["--algo", "hierarchical"]
            procs.append(
                nodes.popen(
                    rank // 2, argv, stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL
                )
            )
        out, _ = procs[0].communicate(timeout=120)
        assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
        line = json.loads(out.splitlines()[-1])
        assert line["algo"] == "hierarchical" and line["np"] == 4
        assert line["transport"] == "mixed"  # shared memory inside a node, TCP between them
        assert line["algbw_GBps"] * 1e9 < ceiling * 1.5  # bounded by the shaped link
    # Nothing is left behind.
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in nodes.namespaces)


def test_bad_rates_are_refused_with_an_example() -> None:
    with pytest.raises(ValueError, match="use e.g. 500mbit"):
        netns.rate_bits("fast")
    assert netns.rate_bits("10gbit") == 10_000_000_000


def test_a_slowed_path_slows_only_the_traffic_between_its_two_nodes() -> None:
    with netns.EmulatedNodes(3) as nodes:
        nodes.slow_path(0, 1, "40mbit")
        slowed = netns.link_ceiling(nodes, streams=1, nbytes=2 << 20)
        # 40 Mbit/s is 5 MB/s; the htb class lets a small burst through.
        assert slowed < 7e6, slowed
        nodes.clear_path(0, 1)
        restored = netns.link_ceiling(nodes, streams=1, nbytes=2 << 20)
        assert restored > 4 * slowed, (slowed, restored)
        with pytest.raises(ValueError, match="use e.g. 500mbit"):
            nodes.slow_path(0, 1, "slow")
    with netns.EmulatedNodes(2, rate="200mbit") as shaped:
        with pytest.raises(ValueError, match="unshaped"):
            shaped.slow_path(0, 1, "40mbit")
