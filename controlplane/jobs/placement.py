"""Placement of a job's workers on nodes (pure; no ORM).

A job goes on one node when one has room (best fit: the node with the fewest free
slots that still holds all workers, so large holes stay free for large jobs), since
workers on one host talk over loopback. Otherwise it is spread over the nodes with the
most free slots first, in rank order, so each node holds a contiguous range of ranks
and a ring crosses between hosts as few times as possible.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeCapacity:
    node_id: int
    free_slots: int


def plan_placement(nodes: list[NodeCapacity], workers: int) -> dict[int, list[int]] | None:
    """Map node id → ranks for ``workers`` workers, or None when they do not fit."""
    if workers < 1:
        raise ValueError("a job needs at least one worker")
    usable = [n for n in nodes if n.free_slots > 0]
    fitting = [n for n in usable if n.free_slots >= workers]
    if fitting:
        best = min(fitting, key=lambda n: (n.free_slots, n.node_id))
        return {best.node_id: list(range(workers))}
    if sum(n.free_slots for n in usable) < workers:
        return None
    plan: dict[int, list[int]] = {}
    rank = 0
    for node in sorted(usable, key=lambda n: (-n.free_slots, n.node_id)):
        take = min(node.free_slots, workers - rank)
        plan[node.node_id] = list(range(rank, rank + take))
        rank += take
        if rank == workers:
            break
    return plan
