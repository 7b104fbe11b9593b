"""One rank of tests/agent/native/test_ring_order.py's emulated-nodes test, started inside a
node's network namespace: ``python ring_order_rank.py RANK PEERS`` times a ring allreduce
in rank order, routes it (agent.runtime.routing: a ring order, or the tree when a node's
whole link is slow), times it again and prints JSON."""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from agent.native import Communicator
from agent.runtime import routing

COUNT = (1 << 20) // 4  # 1 MiB of float32


def timed_allreduce(comm: Communicator, rank: int) -> tuple[float, bool]:
    best, correct = float("inf"), True
    for _ in range(2):
        x = np.full(COUNT, float(rank + 1), np.float32)
        started = time.perf_counter()
        comm.allreduce(x)
        best = min(best, time.perf_counter() - started)
        correct = correct and bool(np.all(x == sum(range(1, comm.size + 1))))
    return best, correct


def main() -> None:
    rank, peers = int(sys.argv[1]), sys.argv[2].split(",")
    comm = Communicator(rank, peers, timeout_s=60, algorithm="ring")
    in_rank_order, correct_before = timed_allreduce(comm, rank)
    figures = routing.route(comm)
    routed, correct_after = timed_allreduce(comm, rank)
    order, algorithm = list(comm.ring_order), comm.algorithm
    comm.close()
    print(
        json.dumps(
            {
                "rank": rank,
                "order": order,
                "algorithm": algorithm,
                "rank_order_s": in_rank_order,
                "routed_s": routed,
                "correct": correct_before and correct_after,
                **figures,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
