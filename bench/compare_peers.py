"""Our allreduce side by side with Gloo, Open MPI over TCP and the TCP loopback ceiling, in one run.

    python -m bench.compare_peers [--nps 2,4] [--sizes 4K,256K,4M,32M] [--algo auto]
                                  [--rounds 3] [--peers-python /tmp/peers/bin/python]

For each rank count it runs ``python -m bench.allreduce`` (this library) and
``../shared/bench/peer_allreduce.py`` for Gloo (torch.distributed) and for
Open MPI under ``mpirun --mca btl tcp,self`` (the TCP path: the fair peer for
a TCP library), plus the one-way TCP loopback ceiling. The three backends run
``--rounds`` times, interleaved (ours, MPI, Gloo, ours, ...), and each figure
is the median over the rounds of each run's median, so that a burst of load
from elsewhere on the machine does not land on one backend only; the ceiling
is measured before the first and after every round, and its median used.
Every run's figures are printed as the JSON lines its benchmark printed,
then the medians as JSON lines with "rounds", then a table of same-run ratios: ours/MPI-TCP and
ours/Gloo (busbw), ours/ceiling (busbw against one-way loopback throughput),
and the 4 KiB latency ratio (ours/MPI-TCP median time; lower is better).

The peers live in a virtual environment of their own (not the project's):

    apt-get install -y openmpi-bin libopenmpi-dev
    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0 mpi4py numpy

Machine load moves every figure; only ratios from one run mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.local import free_port

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEER_SCRIPT = ROOT.parent / "shared" / "bench" / "peer_allreduce.py"
INSTALL_HINT = """\
The peer baselines need their own virtual environment and Open MPI:
    apt-get install -y openmpi-bin libopenmpi-dev
    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0 mpi4py numpy
then pass --peers-python /tmp/peers/bin/python (the default)."""


def json_lines(command: list[str], env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Runs a benchmark; returns its JSON lines, echoing them as they are parsed."""
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=900, env=env, check=False
    )
    lines = []
    for raw in completed.stdout.splitlines():
        raw = raw.strip()
        if raw.startswith("{"):
            lines.append(json.loads(raw))
            print(raw, flush=True)
    if completed.returncode != 0 or not lines:
        sys.stderr.write(
            f"{' '.join(command)} failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}\n"
        )
        raise SystemExit(1)
    return lines


def preflight(peers_python: str, peer_script: Path, mpirun: str) -> None:
    problems = []
    if not Path(peers_python).exists():
        problems.append(f"{peers_python} does not exist")
    else:
        probe = subprocess.run(
            [peers_python, "-c", "import torch, mpi4py, numpy"], capture_output=True, text=True
        )
        if probe.returncode != 0:
            problems.append(f"{peers_python} cannot import torch, mpi4py and numpy")
    if shutil.which(mpirun) is None:
        problems.append(f"{mpirun} is not on PATH (Open MPI is not installed)")
    if not peer_script.exists():
        problems.append(f"{peer_script} does not exist (pass --peer-script)")
    if problems:
        sys.stderr.write(
            "cannot run the peers: " + "; ".join(problems) + "\n" + INSTALL_HINT + "\n"
        )
        raise SystemExit(2)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "n/a"


def table(
    results: dict[tuple[str, int, int], dict[str, Any]],
    ceiling: float,
    nps: list[int],
    sizes: list[int],
) -> str:
    rows = [
        "| np | size | ours busbw GB/s | MPI-TCP | Gloo | ours/MPI-TCP | ours/Gloo "
        "| ours/ceiling | latency ours/MPI-TCP |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in nps:
        for nbytes in sizes:
            ours = results.get(("adaptrain", n, nbytes), {})
            mpi = results.get(("mpi", n, nbytes), {})
            gloo = results.get(("gloo", n, nbytes), {})
            bus = [r.get("busbw_GBps") for r in (ours, mpi, gloo)]
            latency = ratio(ours.get("median_s"), mpi.get("median_s")) if nbytes <= 4096 else ""
            rows.append(
                f"| {n} | {human(nbytes)} | {fmt(bus[0])} | {fmt(bus[1])} | {fmt(bus[2])} "
                f"| {ratio(bus[0], bus[1])} | {ratio(bus[0], bus[2])} "
                f"| {ratio(bus[0], ceiling)} | {latency} |"
            )
    return "\n".join(rows)


def fmt(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "n/a"


def human(nbytes: int) -> str:
    for unit, shift in (("M", 20), ("K", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{unit}"
    return str(nbytes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nps", default="2,4", help="rank counts (default 2,4)")
    parser.add_argument("--sizes", default="4K,256K,4M,32M", help="byte counts, K/M/G allowed")
    parser.add_argument(
        "--algo", default="auto", choices=["ring", "tree", "star", "auto"], help="our algorithm"
    )
    parser.add_argument(
        "--peers-python",
        default="/tmp/peers/bin/python",
        help="python of the venv with torch and mpi4py (default /tmp/peers/bin/python)",
    )
    parser.add_argument("--peer-script", type=Path, default=DEFAULT_PEER_SCRIPT)
    parser.add_argument("--mpirun", default="mpirun")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved runs of each backend (default 3)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    nps = [int(n) for n in args.nps.split(",")]
    from bench.allreduce import parse_size

    sizes = [parse_size(s) for s in args.sizes.split(",")]
    preflight(args.peers_python, args.peer_script, args.mpirun)

    mpi_env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    peer = [args.peers_python, str(args.peer_script)]
    runs: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    ceilings: list[float] = []

    def measure_ceiling() -> None:
        ceilings.append(json_lines([*peer, "tcp"])[0]["GBps"])

    def run_round(n: int, round_index: int) -> None:
        commands = [
            [
                sys.executable,
                "-m",
                "bench.allreduce",
                "--np",
                str(n),
                "--sizes",
                args.sizes,
                "--algo",
                args.algo,
                "--json",
            ],
            [
                args.mpirun,
                "--oversubscribe",
                "--mca",
                "btl",
                "tcp,self",
                "-n",
                str(n),
                *peer,
                "mpi",
                "--sizes",
                args.sizes,
            ],
            [*peer, "gloo", str(n), "--sizes", args.sizes, "--port", str(free_port())],
        ]
        # Rotate the order each round so no backend always runs first or last.
        shift = round_index % len(commands)
        for command in commands[shift:] + commands[:shift]:
            env = mpi_env if command[0] == args.mpirun else None
            for line in json_lines(command, env=env):
                runs.setdefault((line["backend"], line["np"], line["bytes"]), []).append(line)

    measure_ceiling()
    for round_index in range(args.rounds):
        for n in nps:
            run_round(n, round_index)
        measure_ceiling()

    results: dict[tuple[str, int, int], dict[str, Any]] = {}
    for key, lines in sorted(runs.items()):
        medians = [line["median_s"] for line in lines]
        summary = dict(lines[0])
        summary.pop("algbw_GBps", None)
        summary["median_s"] = statistics.median(medians)
        algbw = key[2] / summary["median_s"] / 1e9
        summary["algbw_GBps"] = round(algbw, 4)
        summary["busbw_GBps"] = round(algbw * 2 * (key[1] - 1) / key[1], 4)
        summary["rounds"] = len(lines)
        results[key] = summary
        print(json.dumps(summary))
    ceiling = statistics.median(ceilings)
    print(
        json.dumps(
            {
                "op": "tcp_oneway_median",
                "backend": "loopback",
                "GBps": round(ceiling, 4),
                "runs": ceilings,
            }
        )
    )
    print()
    print(f"one-way TCP loopback ceiling: {ceiling:.3f} GB/s (median of {ceilings})")
    print(table(results, ceiling, nps, sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
