"""The routed ring against the ring and the tree, collectives only: ``python -m bench.ring_routing --json``.

``--nodes`` emulated nodes (network namespaces, ``bench.netns``; needs root), one rank
each. For each buffer size, the allreduce time (median of ``--repeats``) of the ring in
rank order, the binary tree in rank order, and the routed ring (what
``agent.runtime.routing`` chose after probing every path: the ring in the order whose
slowest hop is fastest, or the tree in an order with a slow node as a leaf when a node's
whole link is slow), first with every path at full speed, then with the path between
nodes ``--slow-path`` cut to ``--slow-rate`` (``EmulatedNodes.slow_path``). No model and
no training: what each topology costs when nothing is wrong, and what it gains when one
path is slow, without the training step's compute and its noise. The probe's own time is
reported too.

With ``--link-rate R`` the network is bandwidth-bound (``EmulatedNodes.shape_links``:
every node's link at R each way), and a third phase slows one node's whole link
(``--slow-node``) instead of one path: where the bytes each algorithm moves through a
link decide its time — the ring moves 2(n−1)/n of the buffer through every link, a
binary tree's root the whole buffer to and from each child, and a leaf only once each way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"290K": 290 << 10, "4M": 4 << 20, "32M": 32 << 20}


def serve(rank: int, peers: list[str], sizes: list[str], repeats: int) -> None:
    from agent.native import Communicator
    from agent.runtime import routing

    comm = Communicator(rank, peers, timeout_s=120, algorithm="ring")
    out: dict[str, object] = {}
    started = time.perf_counter()
    figures = routing.route(comm)
    out["probe_s"] = time.perf_counter() - started
    out["order"] = list(comm.ring_order)
    out["routed_algorithm"] = comm.algorithm  # the tree when a node's whole link is slow
    out.update(figures)
    routed = tuple(comm.ring_order)
    for label in sizes:
        x = np.ones(SIZES[label] // 4, np.float32)
        for name, algorithm, order in (
            ("ring", "ring", tuple(range(comm.size))),
            ("tree", "tree", tuple(range(comm.size))),
            ("routed_ring", out["routed_algorithm"], routed),
        ):
            comm.set_algorithm(algorithm)
            comm.set_ring_order(order)
            comm.allreduce(x)  # warm
            times = []
            for _ in range(repeats):
                comm.barrier()
                t0 = time.perf_counter()
                comm.allreduce(x)
                times.append(time.perf_counter() - t0)
            out[f"{name}_{label}_s"] = statistics.median(times)
    comm.close()
    print(json.dumps(out), flush=True)


def run_phase(nodes, args, peers: list[str]) -> dict:
    procs = [
        nodes.popen(
            rank,
            [sys.executable, "-m", "bench.ring_routing", "--serve-rank", str(rank),
             "--peers", ",".join(peers), "--sizes", args.sizes, "--repeats", str(args.repeats)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for rank in range(args.nodes)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a rank failed: {[p.returncode for p in procs]}")
    reports = [json.loads(o.splitlines()[-1]) for o in outputs]
    # A collective ends for everyone when the slowest rank is done: the slowest rank's time.
    merged = {k: max(r[k] for r in reports) for k in reports[0] if k.endswith("_s")}
    return {
        **merged,
        **{
            k: reports[0][k]
            for k in ("order", "routed_algorithm", "ring_hop_mbps", "link_mbps_min")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--sizes", default="290K,4M", help=f"of {', '.join(SIZES)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slow-path", default="1,2")
    parser.add_argument("--slow-rate", default="20mbit")
    parser.add_argument(
        "--link-rate",
        default=None,
        help="make every link bandwidth-bound at this rate (e.g. 1gbit) and add a phase "
        "with one node's whole link slowed",
    )
    parser.add_argument("--slow-node", type=int, default=3, help="with --link-rate")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peers", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_rank is not None:
        serve(args.serve_rank, args.peers.split(","), args.sizes.split(","), args.repeats)
        return
    from bench.netns import EmulatedNodes

    a, b = (int(n) for n in args.slow_path.split(","))
    common = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "benchmark": "ring_routing",
        "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start",
        "command": " ".join(["python -m bench.ring_routing --json", *sys.argv[1:]]).replace(
            " --json --json", " --json"
        ),
        "nodes": args.nodes,
        "repeats": args.repeats,
    }
    with EmulatedNodes(args.nodes) as nodes:
        peers = [f"{nodes.address(i)}:{29700 + i}" for i in range(args.nodes)]
        rows = []
        if args.link_rate is None:
            rows.append({**common, "phase": "every path at full speed",
                         **run_phase(nodes, args, peers)})  # fmt: skip
            nodes.slow_path(a, b, args.slow_rate)
            try:
                rows.append({**common, "phase": f"path {a}-{b} at {args.slow_rate}",
                             **run_phase(nodes, args, peers)})  # fmt: skip
            finally:
                nodes.clear_path(a, b)
        else:
            rate, slow = args.link_rate, args.slow_rate
            phases: list[tuple[str, dict]] = [
                (f"every link at {rate}", {}),
                (f"every link at {rate}, path {a}-{b} at {slow}",
                 {"slow_path": (a, b), "slow_rate": slow}),
                (f"every link at {rate}, node {args.slow_node}'s link at {slow}",
                 {"slow_node": args.slow_node, "slow_rate": slow}),
            ]  # fmt: skip
            for phase, shape in phases:
                nodes.shape_links(rate, **shape)
                try:
                    rows.append({**common, "link_rate": rate, "phase": phase,
                                 **run_phase(nodes, args, peers)})  # fmt: skip
                finally:
                    nodes.unshape()
    for row in rows:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
