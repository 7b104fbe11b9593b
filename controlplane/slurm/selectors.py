"""Reads of Slurm allocations, with the nodes their agents enrolled as."""

from __future__ import annotations

from django.db.models import QuerySet

from controlplane.jobs.models import Node
from controlplane.slurm.models import Allocation


def allocations_all() -> QuerySet[Allocation]:
    return Allocation.objects.select_related("created_by")


def allocation_nodes(allocation: Allocation) -> list[Node]:
    """The nodes enrolled with the allocation's join token."""
    if allocation.join_token_id is None:
        return []
    return list(Node.objects.filter(join_token_id=allocation.join_token_id).order_by("id"))
