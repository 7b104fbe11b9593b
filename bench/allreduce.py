"""Allreduce throughput of agent.native on one host, one JSON line per size.

    python -m bench.allreduce --np 4 --sizes 4K,256K,4M,32M --json [--algo ring|tree|star|auto]
                              [--transport auto|shm|tcp]
    python -m bench.allreduce --nodes 2 --per-node 4 --link 1gbit [--delay-us 25]
                              --algos ring,hierarchical,hierarchical@0,mpi --sizes 4M,32M
                              [--collective allreduce|broadcast|allgather]
                              [--rounds 3] --json

The second form emulates nodes with network namespaces (bench/netns.py, root
only): each node's ranks share an address and memory, the nodes are joined by
links shaped with tc to --link, and the same run measures the link's ceiling
(one TCP stream and --per-node streams between two nodes, iperf-style). Each
line then also has "nodes", "per_node", "link", "ceiling_Bps" (the best of the
two) and "link_bound_algbw_GBps": the fastest algbw any allreduce can reach
when each node must send and receive 2(N-1)/N of the buffer over its link
(for N = 2 nodes: the buffer once), with "of_link_bound" the ratio to it.
--collective broadcast (from rank 0, each call timed with a barrier after it,
so that it ends when the last rank has the bytes) and allgather time those
instead; their
bound is the buffer once per node (broadcast) and the other nodes' (N-1)/N of
the output (allgather, whose size is the whole output, as in nccl-tests).
The algorithm "mpi" is Open MPI on the same topology (bench/mpi_collective.c,
built with mpicc): mpirun in node 0's namespace starts one orted per node
through an rsh agent that enters that node's namespace (and UTS namespace, so
each node has its own host name), with `--mca btl tcp,vader,self` on eth0:
shared memory inside a node, TCP over the shaped link between nodes, and
mpi_yield_when_idle=1 (unless OMPI_MCA_mpi_yield_when_idle is set), since the
ranks outnumber the cores here. "mpi@han" adds --mca coll_han_priority 100:
Open MPI's own hierarchical collectives (coll/han) instead of coll/tuned.
"hierarchical@SIZE" sets its chunk (COLLECTIVE_HIERARCHICAL_CHUNK_BYTES) and
"hierarchical@leader" the leader scheme (COLLECTIVE_HIERARCHICAL_SCHEME=leader:
one rank per node crosses between nodes, against every rank on its shard).

spawns N local ranks on this host (their pairs use shared memory or TCP
loopback, as COLLECTIVE_LOCAL_TRANSPORT or --transport says), runs float32
sum allreduce with the chosen algorithm (default auto) and prints
{"op","backend","algo","transport","np","bytes","median_s","algbw_GBps","busbw_GBps"}
per size, with busbw = algbw * 2(n-1)/n as in nccl-tests; "transport" is
what rank 0's links really use ("shm", "tcp" or "mixed"). The warm-up and
repeat rules match ../shared/bench/peer_allreduce.py (Gloo and Open MPI), so
the lines compare side by side: 3 warm-up calls, then a barrier before every
timed call and rank 0's median. Without --json it prints a table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from agent.local import peer_list

WARMUP_CALLS = 3
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    text = text.strip()
    unit = _UNITS.get(text[-1:].upper())
    value = int(text[:-1]) * unit if unit else int(text)
    if value <= 0 or value % 4:
        raise argparse.ArgumentTypeError(
            f"size {text!r} must be a positive multiple of 4 bytes (float32)"
        )
    return value


def repeats_for(nbytes: int) -> int:
    """Enough calls to move ~64 MiB per size, at least 5 and at most 200."""
    return max(5, min(200, (64 << 20) // max(nbytes, 1)))


ALGORITHMS = ("ring", "tree", "star", "auto", "hierarchical")
COLLECTIVES = ("allreduce", "broadcast", "allgather")


def bus_factor(collective: str, n: int) -> float:
    """busbw / algbw as in nccl-tests."""
    if collective == "allreduce":
        return 2 * (n - 1) / n
    return (n - 1) / n if collective == "allgather" else 1.0


def figures(
    n: int,
    nbytes: int,
    times: list[float],
    algo: str = "auto",
    transport: str = "tcp",
    collective: str = "allreduce",
) -> dict[str, Any]:
    median = statistics.median(times)
    algbw = nbytes / median / 1e9
    return {
        "op": collective,
        "backend": "adaptrain",
        "algo": algo,
        "transport": transport,
        "np": n,
        "bytes": nbytes,
        "median_s": round(median, 7),
        "algbw_GBps": round(algbw, 4),
        "busbw_GBps": round(algbw * bus_factor(collective, n), 4),
    }


def run_rank(
    rank: int,
    peers: list[str],
    sizes: list[int],
    repeats: int | None,
    results: Any,
    algo: str = "auto",
    collective: str = "allreduce",
) -> None:
    from agent.native import Communicator

    n = len(peers)
    with Communicator(rank, peers, timeout_s=60, algorithm=algo) as comm:
        kinds = {kind for kind in comm.links if kind != "self"}
        transport = kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "self")
        call = {
            "allreduce": comm.allreduce,
            "broadcast": comm.broadcast,  # from rank 0
            "allgather": comm.allgather,
        }[collective]
        for nbytes in sizes:
            # An allgather's size is its whole output (nccl-tests): each rank sends 1/n.
            each = nbytes // n if collective == "allgather" else nbytes
            x = np.ones(each // 4, dtype=np.float32)
            for _ in range(WARMUP_CALLS):
                call(x)
            times = []
            for _ in range(repeats or repeats_for(nbytes)):
                comm.barrier()
                started = time.perf_counter()
                call(x)
                if collective == "broadcast":
                    # The root is done once its bytes are in socket buffers; the
                    # broadcast is done when the last rank has them.
                    comm.barrier()
                times.append(time.perf_counter() - started)
            if rank == 0:
                results.put(figures(n, nbytes, times, algo, transport, collective))
    if rank == 0:
        results.put(None)


class _PrintResults:
    """run_rank's results queue for a rank in its own namespace: rank 0 prints JSON lines."""

    def put(self, line: dict[str, Any] | None) -> None:
        if line is not None:
            print(json.dumps(line), flush=True)


def link_bytes_per_unit(collective: str, nodes: int) -> float:
    """Bytes each node must move over its link per byte of `size` (the link bound)."""
    if nodes < 2:
        return 1.0
    if collective == "allreduce":
        return 2 * (nodes - 1) / nodes
    return (nodes - 1) / nodes if collective == "allgather" else 1.0


def check_sizes(sizes: list[int], collective: str, n: int) -> None:
    if collective == "allgather" and any(size % (4 * n) for size in sizes):
        raise SystemExit(f"--collective allgather: every size must be a multiple of 4 * {n}")


class OpenMPI:
    """Open MPI across emulated nodes: an rsh agent that enters a node's namespace."""

    def __init__(self, nodes: Any, per_node: int, folder: str) -> None:
        import shutil
        import subprocess

        if shutil.which("mpicc") is None or shutil.which("mpirun") is None:
            raise SystemExit(
                "--algos mpi needs Open MPI (apt-get install openmpi-bin libopenmpi-dev)"
            )
        self.nodes = nodes
        self.per_node = per_node
        self.binary = os.path.join(folder, "mpi_collective")
        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_collective.c")
        subprocess.run(["mpicc", "-O2", "-o", self.binary, source], check=True)
        self.hostfile = os.path.join(folder, "hosts")
        with open(self.hostfile, "w") as f:
            f.writelines(f"n{i} slots={per_node}\n" for i in range(nodes.count))
        # mpirun's rsh launch: "agent HOST orted ARGS..." runs orted in HOST's namespace,
        # with its own host name (a UTS namespace), so Open MPI sees separate nodes.
        self.agent = os.path.join(folder, "agent.sh")
        cases = "".join(f"  n{i}) ns={ns} ;;\n" for i, ns in enumerate(nodes.namespaces))
        with open(self.agent, "w") as f:
            f.write(
                "#!/bin/sh\n"
                'host="$1"; shift\n'
                'case "$host" in\n'
                f"{cases}"
                '  *) echo "unknown emulated node $host" >&2; exit 1 ;;\n'
                "esac\n"
                'exec ip netns exec "$ns" unshare --uts sh -c "hostname $host; $*"\n'
            )
        os.chmod(self.agent, 0o755)

    def run(
        self, collective: str, sizes: list[int], repeats: int | None, variant: str = ""
    ) -> list[dict[str, Any]]:
        """variant "han": Open MPI's hierarchical collectives (coll/han) instead of its
        default choice (coll/tuned)."""
        import subprocess

        n = self.nodes.count * self.per_node
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        # Ranks outnumber cores here: spinning ranks starve the others (measured at
        # 2 x 2, 1 Gbit/s, 4 MiB allreduce: 0.024 GB/s spinning, 0.065 GB/s yielding).
        env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
        # allgather: the per-rank block is size / n bytes (sizes are whole outputs).
        per_rank = [size // n if collective == "allgather" else size for size in sizes]
        argv = [
            "mpirun", "--hostfile", self.hostfile, "-n", str(n), "--map-by", "slot",
            "--bind-to", "none",
            "--mca", "plm_rsh_agent", self.agent,
            "--mca", "btl", "tcp,vader,self",
            "--mca", "btl_tcp_if_include", "eth0",
            "--mca", "oob_tcp_if_include", "eth0",
            *(["--mca", "coll_han_priority", "100"] if variant == "han" else []),
            self.binary, collective, ",".join(map(str, per_rank)),
        ]  # fmt: skip
        if repeats:
            argv.append(str(repeats))
        done = self.nodes.popen(0, argv, stdout=subprocess.PIPE, env=env)
        out, _ = done.communicate(timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"mpirun failed ({done.returncode})")
        lines = []
        for text in out.splitlines():
            if not text.startswith("{"):
                continue
            raw = json.loads(text)
            size = sizes[per_rank.index(raw["bytes"])]
            algo = f"mpi@{variant}" if variant else "mpi"
            line = figures(n, size, [raw["median_s"]], algo, "shm+tcp", collective)
            line["backend"] = "openmpi"
            lines.append(line)
        return lines


def run_emulated(args: argparse.Namespace, sizes: list[int]) -> int:
    import subprocess
    import tempfile

    from bench.netns import EmulatedNodes, link_ceiling

    n = args.nodes * args.per_node
    check_sizes(sizes, args.collective, n)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    for spec in algos:
        name, _, chunk = spec.partition("@")
        if name not in (*ALGORITHMS, "mpi"):
            raise SystemExit(f"--algos: {name!r} is not one of {', '.join(ALGORITHMS)}, mpi")
        if name == "mpi" and chunk not in ("", "han"):
            raise SystemExit(f"--algos: {spec!r}: use mpi or mpi@han")
        if name != "mpi" and chunk and chunk not in ("0", "leader"):
            parse_size(chunk)  # a bad chunk size fails here, before any namespace is made
    with (
        EmulatedNodes(args.nodes, rate=args.link, delay_us=args.delay_us) as nodes,
        tempfile.TemporaryDirectory(prefix="bench-mpi-") as folder,
    ):
        wants_mpi = any(spec.partition("@")[0] == "mpi" for spec in algos)
        mpi = OpenMPI(nodes, args.per_node, folder) if wants_mpi else None
        # Node-major ranks: a flat ring crosses each node boundary once per direction.
        peers = [
            f"{nodes.address(node)}:{29500 + local}"
            for node in range(args.nodes)
            for local in range(args.per_node)
        ]
        per_byte = link_bytes_per_unit(args.collective, args.nodes)
        for round_ in range(args.rounds):
            # The ceiling of this round: one TCP stream and --per-node streams, the better.
            one_stream = link_ceiling(nodes, streams=1)
            k_streams = link_ceiling(nodes, streams=max(args.per_node, 1))
            ceiling = max(one_stream, k_streams)
            for spec in algos:
                algo, _, chunk = spec.partition("@")
                if mpi is not None and algo == "mpi":
                    lines = mpi.run(args.collective, sizes, args.repeats, chunk)
                else:
                    lines = []
                    env = dict(os.environ)
                    if chunk == "leader":  # one rank per node crosses between nodes
                        env["COLLECTIVE_HIERARCHICAL_SCHEME"] = "leader"
                    elif chunk:
                        env["COLLECTIVE_HIERARCHICAL_CHUNK_BYTES"] = chunk
                    procs = []
                    for rank in range(n):
                        argv = [sys.executable, "-m", "bench.allreduce", "--serve-rank", str(rank)]
                        argv += ["--peers", ",".join(peers), "--sizes", args.sizes]
                        argv += ["--algo", algo, "--collective", args.collective]
                        if args.repeats:
                            argv += ["--repeats", str(args.repeats)]
                        procs.append(
                            nodes.popen(
                                rank // args.per_node,
                                argv,
                                stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
                                env=env,
                            )
                        )
                    out, _ = procs[0].communicate(timeout=1800)
                    failed = any(p.wait(timeout=120) != 0 for p in procs)
                    if failed:
                        print(f"a rank failed with --algos {spec}; see above", file=sys.stderr)
                        return 1
                    lines = [json.loads(text) for text in out.splitlines()]
                for line in lines:
                    bound = ceiling / per_byte / 1e9
                    line.update(
                        nodes=args.nodes,
                        per_node=args.per_node,
                        link=args.link or "unshaped",
                        delay_us=args.delay_us,
                        round=round_,
                        ceiling_Bps=round(ceiling),
                        ceiling_1stream_Bps=round(one_stream),
                        ceiling_kstreams_Bps=round(k_streams),
                        link_bound_algbw_GBps=round(bound, 4),
                        of_link_bound=round(line["algbw_GBps"] / bound, 3),
                    )
                    if chunk == "leader":
                        line["scheme"] = "leader"
                    elif chunk and algo != "mpi":
                        line["chunk_bytes"] = 0 if chunk == "0" else parse_size(chunk)
                    if args.json:
                        print(json.dumps(line), flush=True)
                    else:
                        print(
                            f"{spec:>16} {line['bytes']:>12} {line['algbw_GBps']:>11.4f} GB/s "
                            f"{line['of_link_bound']:>6.2f} of the link bound ({bound:.4f} GB/s)"
                        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--np", type=int, default=2, help="number of local ranks (default 2)")
    parser.add_argument(
        "--sizes", default="4K,256K,4M,32M", help="comma-separated byte counts, K/M/G allowed"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls per size (default: ~64 MiB worth, 5..200)",
    )
    parser.add_argument(
        "--algo", choices=ALGORITHMS, default="auto", help="allreduce algorithm (default auto)"
    )
    parser.add_argument(
        "--transport",
        choices=("auto", "shm", "tcp"),
        default=None,
        help="COLLECTIVE_LOCAL_TRANSPORT for the ranks (default: the environment's, else auto)",
    )
    parser.add_argument(
        "--collective",
        choices=COLLECTIVES,
        default="allreduce",
        help="what to time (default allreduce; broadcast from rank 0; an allgather's size is "
        "its whole output)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line per size")
    parser.add_argument("--nodes", type=int, default=0, help="emulated nodes (network namespaces)")
    parser.add_argument("--per-node", type=int, default=1, help="ranks per emulated node")
    parser.add_argument("--link", default=None, help="tc rate of each node's link, e.g. 1gbit")
    parser.add_argument("--delay-us", type=int, default=0, help="one-way delay added per link")
    parser.add_argument(
        "--algos",
        default="ring,hierarchical",
        help="with --nodes: algorithms to compare; hierarchical@4M runs it with "
        "COLLECTIVE_HIERARCHICAL_CHUNK_BYTES=4M (@0: no pipelining); mpi: Open MPI "
        "(mpi@han: with its hierarchical coll/han)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="with --nodes: interleaved rounds (ceiling each)"
    )
    parser.add_argument("--serve-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peers", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.np < 1:
        parser.error("--np must be at least 1")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if args.serve_rank is None and not args.nodes:
        check_sizes(sizes, args.collective, args.np)
    if args.serve_rank is not None:  # one rank of an emulated-node run, in its namespace
        run_rank(
            args.serve_rank,
            args.peers.split(","),
            sizes,
            args.repeats,
            _PrintResults(),
            args.algo,
            args.collective,
        )
        return 0
    if args.nodes:
        if args.nodes < 1 or args.per_node < 1:
            parser.error("--nodes and --per-node must be at least 1")
        return run_emulated(args, sizes)

    if args.transport is not None:
        os.environ["COLLECTIVE_LOCAL_TRANSPORT"] = args.transport  # inherited by the ranks
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    peers = peer_list(args.np)
    processes = [
        context.Process(
            target=run_rank,
            args=(rank, peers, sizes, args.repeats, results, args.algo, args.collective),
            daemon=True,
        )
        for rank in range(args.np)
    ]
    for process in processes:
        process.start()
    if not args.json:
        print(f"{'bytes':>12} {'median_s':>12} {'algbw_GBps':>11} {'busbw_GBps':>11}")
    failed = False
    while True:
        try:
            line = results.get(timeout=5)
        except Exception:  # queue.Empty: check whether a rank died
            if any(p.exitcode not in (None, 0) for p in processes):
                failed = True
                break
            continue
        if line is None:
            break
        if args.json:
            print(json.dumps(line), flush=True)
        else:
            print(
                f"{line['bytes']:>12} {line['median_s']:>12.6f} {line['algbw_GBps']:>11.4f} {line['busbw_GBps']:>11.4f}"
            )
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
        failed = failed or process.exitcode != 0
    if failed:
        print("a rank failed; see its traceback above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
