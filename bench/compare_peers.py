"""Our allreduce side by side with Gloo, Open MPI and the TCP loopback ceiling, in one run.

    python -m bench.compare_peers [--nps 2,4] [--sizes 4K,256K,4M,32M] [--algo auto]
                                  [--rounds 3] [--peers-python /tmp/peers/bin/python]

Like is compared with like. For each rank count it runs, per round:

* ours over TCP (``python -m bench.allreduce --transport tcp``) and ours over
  shared memory (``--transport shm``; ranks on one host);
* Open MPI under ``mpirun --mca btl tcp,self`` (its TCP path, the peer for
  ours over TCP) and Open MPI with its defaults (shared memory between ranks
  on one host, the peer for ours over shared memory), both through
  ``../shared/bench/peer_allreduce.py``;
* Gloo (torch.distributed over loopback TCP);

plus the one-way TCP loopback ceiling. The five backends run ``--rounds``
times, interleaved and rotated each round, and each figure is the median
over the rounds of each run's median, so that a burst of load from elsewhere
on the machine does not land on one backend only; the ceiling is measured
before the first and after every round, and its median used. Every run's
figures are printed as the JSON lines its benchmark printed (backends
relabelled adaptrain-tcp / adaptrain-shm / mpi-tcp / mpi-default), then the
medians as JSON lines with "rounds", then two tables of busbw and same-run
ratios: ours-TCP against MPI-TCP, Gloo and the ceiling, and ours-shm against
MPI-default and ours-TCP; 4 KiB latency ratios are median times (lower is
better).

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


def json_lines(
    command: list[str], env: dict[str, str] | None = None, label: str | None = None
) -> list[dict[str, Any]]:
    """Runs a benchmark; returns its JSON lines (backend set to `label`), echoing them."""
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=900, env=env, check=False
    )
    lines = []
    for raw in completed.stdout.splitlines():
        raw = raw.strip()
        if raw.startswith("{"):
            line = json.loads(raw)
            if label is not None:
                line["backend"] = label
            lines.append(line)
            print(json.dumps(line), flush=True)
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
    def get(backend: str, n: int, nbytes: int, key: str) -> float | None:
        return results.get((backend, n, nbytes), {}).get(key)

    tcp_rows = [
        "TCP path (busbw GB/s; ratios of busbw):",
        "",
        "| np | size | ours-TCP | MPI-TCP | Gloo | ours-TCP/MPI-TCP | ours-TCP/Gloo "
        "| ours-TCP/ceiling | 4K latency ours-TCP/MPI-TCP |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    shm_rows = [
        "Local fast path (busbw GB/s; ratios of busbw):",
        "",
        "| np | size | ours-shm | MPI-default (shm) | ours-shm/MPI-default | ours-shm/ours-TCP "
        "| ours-shm/ceiling | 4K latency ours-shm/MPI-default |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in nps:
        for nbytes in sizes:
            ours_tcp, ours_shm, mpi_tcp, mpi_default, gloo = (
                get(b, n, nbytes, "busbw_GBps")
                for b in ("adaptrain-tcp", "adaptrain-shm", "mpi-tcp", "mpi-default", "gloo")
            )
            small = nbytes <= 4096
            tcp_latency = (
                ratio(
                    get("adaptrain-tcp", n, nbytes, "median_s"),
                    get("mpi-tcp", n, nbytes, "median_s"),
                )
                if small
                else ""
            )
            shm_latency = (
                ratio(
                    get("adaptrain-shm", n, nbytes, "median_s"),
                    get("mpi-default", n, nbytes, "median_s"),
                )
                if small
                else ""
            )
            tcp_rows.append(
                f"| {n} | {human(nbytes)} | {fmt(ours_tcp)} | {fmt(mpi_tcp)} | {fmt(gloo)} "
                f"| {ratio(ours_tcp, mpi_tcp)} | {ratio(ours_tcp, gloo)} "
                f"| {ratio(ours_tcp, ceiling)} | {tcp_latency} |"
            )
            shm_rows.append(
                f"| {n} | {human(nbytes)} | {fmt(ours_shm)} | {fmt(mpi_default)} "
                f"| {ratio(ours_shm, mpi_default)} | {ratio(ours_shm, ours_tcp)} "
                f"| {ratio(ours_shm, ceiling)} | {shm_latency} |"
            )
    return "\n".join([*tcp_rows, "", *shm_rows])


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
        "--algo",
        default="auto",
        choices=["ring", "tree", "star", "hierarchical", "auto"],
        help="our algorithm",
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
        ours = [sys.executable, "-m", "bench.allreduce", "--np", str(n), "--sizes", args.sizes]
        ours += ["--algo", args.algo, "--json"]
        mpi = [args.mpirun, "--oversubscribe"]
        mpi_args = ["-n", str(n), *peer, "mpi", "--sizes", args.sizes]
        # (label, command, environment)
        commands: list[tuple[str, list[str], dict[str, str] | None]] = [
            ("adaptrain-tcp", [*ours, "--transport", "tcp"], None),
            ("mpi-tcp", [*mpi, "--mca", "btl", "tcp,self", *mpi_args], mpi_env),
            (
                "gloo",
                [*peer, "gloo", str(n), "--sizes", args.sizes, "--port", str(free_port())],
                None,
            ),
            ("adaptrain-shm", [*ours, "--transport", "shm"], None),
            ("mpi-default", [*mpi, *mpi_args], mpi_env),
        ]
        # Rotate the order each round so no backend always runs first or last.
        shift = round_index % len(commands)
        for label, command, env in commands[shift:] + commands[:shift]:
            for line in json_lines(command, env=env, label=label):
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
