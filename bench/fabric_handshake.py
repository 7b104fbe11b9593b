"""What the fabric's proof of membership costs: group formation and allreduce
bandwidth with the authenticated handshake ("after") against the build before it
("before"), in the same run, plus the cost of one proof.

    python -m bench.fabric_handshake --before DIR [--previous DIR2] [--np 2,4,8]
                                     [--rounds 2] [--formations 5] [--bytes 4M] [--json]

DIR holds the previous commit's ``agent`` package with its extension built in place
(``git archive <commit> agent | tar -x -C DIR`` and a CMake build of
``DIR/agent/native``). For each group size, sets of ranks of the two builds take turns
(``--rounds`` each); every set forms its group ``--formations`` times (all ranks
starting at one instant; a formation lasts until its slowest rank has formed) and then
times 20 float32 ring allreduces of ``--bytes``. Prints one JSON line per group size:
median formation time of each build and their difference, the difference per
connection a rank makes (np - 1), and the busbw of each build and their ratio; and one
line with the median time of one HMAC-SHA256 proof (each connection computes four).
With ``--previous`` a third build (another authenticated handshake, e.g. fabric
protocol 3) takes its turn in each round too, and its median formation time and
difference to "before" join the line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.local import peer_list
from bench.allreduce import parse_size

RANK_SCRIPT = Path(__file__).with_name("_fabric_rank.py")


def run_set(n: int, formations: int, nbytes: int, native_root: str, name: str) -> dict[str, Any]:
    peers = ",".join(peer_list(n))
    processes = [
        subprocess.Popen(
            [sys.executable, str(RANK_SCRIPT), str(rank), peers, str(formations), str(nbytes)]
            + ([native_root] if native_root else []),
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in range(n)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    if any(p.returncode != 0 for p in processes):
        raise RuntimeError(f"a rank of the {name} set failed")
    return json.loads(outputs[0])


def proof_cost_s() -> float:
    from agent.native import _collective

    key, message = b"k" * 64, b"m" * 120  # a secret and a handshake context's size
    times = []
    for _ in range(7):
        began = time.perf_counter()
        for _ in range(1000):
            _collective._hmac_sha256(key, message)
        times.append((time.perf_counter() - began) / 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="directory with the build without auth")
    parser.add_argument(
        "--previous",
        default="",
        help="directory with another authenticated build to time alongside (e.g. protocol 3)",
    )
    parser.add_argument("--np", default="2,4,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--formations", type=int, default=5)
    parser.add_argument("--bytes", type=parse_size, default=parse_size("4M"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    lines = []
    for n in (int(v) for v in args.np.split(",")):
        variants = [("before", args.before)]
        variants += [("previous", args.previous)] if args.previous else []
        variants += [("after", "")]
        formed: dict[str, list[float]] = {name: [] for name, _ in variants}
        busbw: dict[str, list[float]] = {name: [] for name, _ in variants}
        modules = {}
        for _ in range(args.rounds):
            for variant, root in variants:
                result = run_set(n, args.formations, args.bytes, root, variant)
                formed[variant] += result["formation_s"]
                busbw[variant].append(result["busbw_GBps"])
                modules[variant] = result["module"]
        if modules["before"] == modules["after"]:
            raise RuntimeError(f"both sets loaded {modules['after']}: check --before")
        before_ms = statistics.median(formed["before"]) * 1e3
        after_ms = statistics.median(formed["after"]) * 1e3
        bw_before = statistics.median(busbw["before"])
        bw_after = statistics.median(busbw["after"])
        previous: dict[str, Any] = {}
        if args.previous:
            previous_ms = statistics.median(formed["previous"]) * 1e3
            previous = {
                "formation_previous_ms": round(previous_ms, 2),
                "previous_delta_ms": round(previous_ms - before_ms, 2),
            }
        lines.append(
            {
                "bench": "fabric_handshake",
                "np": n,
                "formations": len(formed["after"]),
                "formation_before_ms": round(before_ms, 2),
                "formation_after_ms": round(after_ms, 2),
                "formation_delta_ms": round(after_ms - before_ms, 2),
                "delta_per_connection_ms": round((after_ms - before_ms) / (n - 1), 3),
                **previous,
                "bytes": args.bytes,
                "busbw_before_GBps": round(bw_before, 3),
                "busbw_after_GBps": round(bw_after, 3),
                "busbw_ratio": round(bw_after / bw_before, 3),
            }
        )
        print(json.dumps(lines[-1]) if args.json else lines[-1], flush=True)
    proof = {"bench": "fabric_handshake", "hmac_proof_us": round(proof_cost_s() * 1e6, 2)}
    print(json.dumps(proof) if args.json else proof, flush=True)


if __name__ == "__main__":
    main()
