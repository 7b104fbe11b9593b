"""Placement of a job's workers on nodes (pure; no ORM).

Only nodes whose labels contain every pair of the job's node selector are eligible
(``{"gpu": "a100"}`` matches a node labelled ``{"gpu": "a100", "zone": "b"}``; an empty
selector matches every node), as Kubernetes' ``nodeSelector`` does, and that run the
job's kind of code (a node's ``AGENT_CODE``: bundles, installed, examples).

Among the eligible nodes, a job goes on one node when one has room (best fit: the node
with the fewest free slots that still holds all workers, so large holes stay free for
large jobs), since workers on one host talk over loopback. Otherwise it is spread over
the nodes with the most free slots first, in rank order, so each node holds a
contiguous range of ranks and a ring crosses between hosts as few times as possible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.protocol.vocabulary import CODE_KINDS


@dataclass(frozen=True)
class NodeCapacity:
    node_id: int
    free_slots: int
    labels: Mapping[str, str] = field(default_factory=dict)
    code_kinds: frozenset[str] = frozenset(CODE_KINDS)


def eligible(
    node: NodeCapacity, node_selector: Mapping[str, str] | None, code_kind: str | None
) -> bool:
    """Whether the job's workers may go on ``node`` (slots aside): its labels match the
    job's node selector and it runs the job's kind of code (None: any)."""
    return labels_match(node.labels, node_selector) and (
        code_kind is None or code_kind in node.code_kinds
    )


def labels_match(labels: Mapping[str, str], node_selector: Mapping[str, str] | None) -> bool:
    """Whether a node with ``labels`` may run workers of a job with ``node_selector``."""
    return all(
        key in labels and labels[key] == value for key, value in (node_selector or {}).items()
    )


def node_selector_text(node_selector: Mapping[str, str]) -> str:
    """A node selector as people write it, for messages: ``gpu=a100, zone=eu-1``."""
    return ", ".join(f"{key}={value}" for key, value in sorted(node_selector.items()))


def plan_placement(
    nodes: list[NodeCapacity],
    workers: int,
    node_selector: Mapping[str, str] | None = None,
    code_kind: str | None = None,
) -> dict[int, list[int]] | None:
    """Map node id → ranks for ``workers`` workers on nodes matching ``node_selector`` that
    run ``code_kind`` (see :func:`eligible`), or None when they do not fit there."""
    if workers < 1:
        raise ValueError("a job needs at least one worker")
    usable = [n for n in nodes if n.free_slots > 0 and eligible(n, node_selector, code_kind)]
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
