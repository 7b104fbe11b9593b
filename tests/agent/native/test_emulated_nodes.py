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
from typing import Any

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


def _tx_bytes(nodes: netns.EmulatedNodes, node: int) -> int:
    argv = ["ip", "netns", "exec", nodes.namespaces[node], "cat"]
    argv.append("/sys/class/net/eth0/statistics/tx_bytes")
    return int(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize("collective", ["broadcast", "allgather"])
def test_hierarchical_broadcast_and_allgather_run_across_namespaces(collective: str) -> None:
    # Unshaped: a token bucket drops packets, and retransmissions would blur the count.
    with netns.EmulatedNodes(2) as nodes:
        peers = [
            f"{nodes.address(node)}:{29500 + local}" for node in range(2) for local in range(2)
        ]
        before = _tx_bytes(nodes, 0)
        procs = []
        for rank in range(4):
            argv = [sys.executable, "-m", "bench.allreduce", "--serve-rank", str(rank)]
            argv += ["--peers", ",".join(peers), "--sizes", "1M", "--repeats", "2"]
            argv += ["--algo", "hierarchical", "--collective", collective]
            procs.append(
                nodes.popen(
                    rank // 2, argv, stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL
                )
            )
        out, _ = procs[0].communicate(timeout=120)
        assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
        line = json.loads(out.splitlines()[-1])
        assert line["op"] == collective and line["algo"] == "hierarchical"
        # 5 calls (3 warm-up): node 0 sends the 1 MiB buffer (broadcast) or its half of
        # the 1 MiB output (allgather) over its link each time, and not much more.
        sent = _tx_bytes(nodes, 0) - before
        each = (1 << 20) if collective == "broadcast" else (1 << 19)
        assert 5 * each <= sent < 5 * each * 1.3, sent


@pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v mpicc && command -v mpirun"]).returncode != 0,
    reason="Open MPI (openmpi-bin, libopenmpi-dev) is not installed",
)
@pytest.mark.parametrize("variant", ["", "han"])
def test_open_mpi_runs_across_namespaces_with_tcp_between_them(tmp_path: Any, variant: str) -> None:
    from bench.allreduce import OpenMPI

    with netns.EmulatedNodes(2) as nodes:
        mpi = OpenMPI(nodes, 2, str(tmp_path))
        before = _tx_bytes(nodes, 0)
        lines = mpi.run("allreduce", [1 << 20], repeats=4, variant=variant)
        sent = _tx_bytes(nodes, 0) - before
    assert [line["bytes"] for line in lines] == [1 << 20]
    assert lines[0]["backend"] == "openmpi" and lines[0]["np"] == 4
    assert lines[0]["algo"] == ("mpi@han" if variant else "mpi")
    # 7 allreduces of 1 MiB across 2 nodes: node 0 must send at least the buffer per call
    # over eth0; had Open MPI put the two nodes' ranks on shared memory, almost nothing.
    assert sent >= 7 * (1 << 20), sent


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


def test_shaped_links_with_one_path_or_one_node_slowed() -> None:
    """Every link at 200 Mbit/s (25 MB/s) each way; then one path, then one node's whole
    link, at 40 Mbit/s (5 MB/s) on top: only the traffic that crosses it slows."""
    with netns.EmulatedNodes(3) as nodes:

        def rate(src: int, dst: int) -> float:
            return netns.link_ceiling(nodes, streams=1, nbytes=4 << 20, src=src, dst=dst)

        nodes.shape_links("200mbit", slow_path=(0, 1), slow_rate="40mbit")
        assert rate(0, 1) < 7e6 and rate(1, 0) < 7e6
        assert 15e6 < rate(0, 2) < 27e6 and 15e6 < rate(2, 1) < 27e6
        nodes.unshape()
        nodes.shape_links("200mbit", slow_node=2, slow_rate="40mbit")
        assert rate(0, 2) < 7e6 and rate(2, 1) < 7e6  # into and out of the slow node
        assert 15e6 < rate(0, 1) < 27e6
        nodes.unshape()
        assert rate(0, 2) > 100e6  # veth pairs with nothing in the way
        with pytest.raises(ValueError, match="need slow_rate"):
            nodes.shape_links("200mbit", slow_node=1)
        with pytest.raises(ValueError, match="out of range"):
            nodes.shape_links("200mbit", slow_node=5, slow_rate="40mbit")
        with pytest.raises(ValueError, match="use e.g. 500mbit"):
            nodes.shape_links("fast")
