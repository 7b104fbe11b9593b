"""Elastic sessions: groups keyed by cluster version, resized through a store, over real processes.

The resize test grows a group from 2 to 3 members and shrinks it to 2 again
(a different 2, in another order), each version formed by
:func:`agent.native.elastic.join` from specs a controller publishes to a
:class:`StoreServer` over HTTP, and checks an allreduce against NumPy at every
version. Survivors keep their addresses, so each version also shows that a
communicator can listen on the address of one closed a moment before.

The stale-version test runs two groups at cluster version 2 next to
processes still at version 1: one that keeps connecting to a version-2
member, and one that holds the address a version-2 member must listen on.
The version-1 processes are refused (and say that they met another cluster
version), the version-2 groups form once the way is clear, and their sums
contain no stale contribution.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from native_ranks import SPAWN, free_peers, run_ranks

from agent.native import CollectiveTimeout, Communicator
from agent.native.elastic import ClusterSpec, join, publish_spec
from agent.native.store import HttpStore, StoreServer

TIMEOUT_S = 20.0
COUNT = 1001  # not divisible by 2 or 3


def contribution(address: str) -> np.ndarray:
    """What the member at ``address`` puts into the allreduce: the same in every process."""
    port = int(address.rsplit(":", 1)[1])
    return np.arange(COUNT, dtype=np.float64) * (port % 1000 + 1)


def _member(rank: int, peers: list[str], store_url: str, plan: dict[int, list[int]]) -> list[Any]:
    """Joins each version that lists this process's address; rank 0 is also the controller."""
    store = HttpStore(store_url)
    address = peers[rank]
    specs = {
        version: ClusterSpec(version, tuple(peers[r] for r in ranks))
        for version, ranks in plan.items()
    }
    seen = []
    for version in sorted(specs):
        if rank == 0:
            # Publish a version only after every member of the previous one
            # is done with it, so each join meets exactly the spec expected.
            previous = specs.get(version - 1)
            for member in previous.members if previous else ():
                store.wait(f"done/{version - 1}/{member}", timeout_s=TIMEOUT_S)
            publish_spec(store, specs[version])
        if address not in specs[version].members:
            continue
        comm = join(store, address, min_version=version, timeout_s=TIMEOUT_S)
        x = contribution(address)
        comm.allreduce(x)
        expected = sum(contribution(member) for member in specs[version].members)
        np.testing.assert_array_equal(x, expected)
        seen.append((comm.cluster_version, comm.rank, comm.size, list(comm.peers), comm.links))
        comm.close()
        store.set(f"done/{version}/{address}", b"1")
    return seen


@pytest.mark.parametrize("local_transport", ["shm", "tcp"])
def test_group_grows_from_2_to_3_and_shrinks_to_2_through_the_store(
    local_transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Survivors of one version set up fresh segments for the next
    # (shared memory), or fresh sockets (tcp).
    monkeypatch.setenv("COLLECTIVE_LOCAL_TRANSPORT", local_transport)
    # Version 1: ranks 0 and 1; version 2 adds 2; version 3 drops 1 and puts 2 first.
    plan = {1: [0, 1], 2: [0, 1, 2], 3: [2, 0]}
    with StoreServer() as server:
        results = run_ranks(_member, 3, server.url, plan, timeout_s=90)
    peers_by_version: dict[int, list[str]] = {}
    for rank, seen in results.items():
        versions = [entry[0] for entry in seen]
        assert versions == [v for v in sorted(plan) if rank in plan[v]], (rank, seen)
        for version, comm_rank, size, peers, links in seen:
            assert size == len(plan[version])
            assert links == tuple(
                "self" if r == comm_rank else local_transport for r in range(size)
            )
            assert comm_rank == plan[version].index(rank)
            peers_by_version.setdefault(version, peers)
            assert peers_by_version[version] == peers
    assert [len(peers_by_version[v]) for v in sorted(plan)] == [2, 3, 2]


def _stale_and_current(
    rank: int, peers: list[str], spare: str, start: Any
) -> tuple[str, str] | list[float]:
    """Five processes; see the module docstring. Returns an allreduce result or an error."""
    group_a = [peers[0], peers[1]]  # version 2
    group_b = [peers[4], peers[3]]  # version 2; peers[3] first held by a version-1 process
    start.wait()
    if rank == 1:  # a version-2 member, listening at once
        with Communicator(1, group_a, timeout_s=TIMEOUT_S, cluster_version=2) as comm:
            return comm.allreduce(np.array([1.0, 10.0])).tolist()
    if rank == 2:  # still at version 1, believes peers[1] is its rank 1
        try:
            Communicator(0, [peers[2], peers[1]], timeout_s=2.0, cluster_version=1)
        except CollectiveTimeout as error:
            return "refused", str(error)
        raise AssertionError("a version-1 process joined a version-2 member")
    if rank == 0:  # the other version-2 member, once the stale one has given up
        time.sleep(3.0)
        with Communicator(0, group_a, timeout_s=TIMEOUT_S, cluster_version=2) as comm:
            return comm.allreduce(np.array([2.0, 20.0])).tolist()
    if rank == 3:  # first a version-1 listener on peers[3], then the version-2 member there
        try:
            Communicator(1, [spare, peers[3]], timeout_s=1.5, cluster_version=1)
            raise AssertionError("the version-1 group formed without its rank 0")
        except CollectiveTimeout as error:
            old_error = str(error)
        with Communicator(1, group_b, timeout_s=TIMEOUT_S, cluster_version=2) as comm:
            result = comm.allreduce(np.array([3.0, 30.0]))
        return "reused", old_error + "|" + ",".join(map(str, result.tolist()))
    # rank 4: a version-2 member whose peer's address is still held by version 1
    time.sleep(0.3)
    with Communicator(0, group_b, timeout_s=TIMEOUT_S, cluster_version=2) as comm:
        assert comm.cluster_version == 2
        return comm.allreduce(np.array([4.0, 40.0])).tolist()


def test_peers_at_another_cluster_version_are_refused_and_never_mixed_in() -> None:
    spare = free_peers(1)[0]  # nobody listens there
    start = SPAWN.Barrier(5)
    results = run_ranks(_stale_and_current, 5, spare, start, timeout_s=60)
    # Group A summed only its two members, not the stale process.
    assert results[0] == results[1] == [3.0, 30.0]
    kind, message = results[2]
    assert kind == "refused"
    assert "peers at another cluster version were seen" in message
    assert "answered from cluster version 2, this rank is at 1" in message
    # The version-1 listener refused the version-2 connector, which kept
    # retrying and formed group B on the same address once it was free.
    kind, text = results[3]
    old_error, result = text.split("|")
    assert kind == "reused"
    assert "peers at another cluster version were seen" in old_error
    assert "at cluster version 2 (this rank is at 1)" in old_error
    assert result == "7.0,70.0"
    assert results[4] == [7.0, 70.0]


def test_cluster_version_is_checked_and_exposed() -> None:
    with Communicator(0, ["127.0.0.1:1"], timeout_s=1, cluster_version=7) as comm:
        assert comm.cluster_version == 7
        assert "cluster_version=7" in repr(comm)
    assert Communicator(0, ["127.0.0.1:1"], timeout_s=1).cluster_version == 0
    for bad in (-1, 1.5, "3", True, 2**63):
        try:
            Communicator(0, ["127.0.0.1:1"], timeout_s=1, cluster_version=bad)  # type: ignore[arg-type]
        except ValueError as error:
            assert "cluster_version" in str(error)
        else:
            raise AssertionError(f"cluster_version={bad!r} was accepted")


def test_join_skips_specs_that_leave_this_address_out() -> None:
    with StoreServer() as server:
        store = HttpStore(server.url)
        publish_spec(store, ClusterSpec(4, ("127.0.0.1:9",)))
        try:
            join(store, "127.0.0.1:1", min_version=3, timeout_s=0.3)
        except TimeoutError as error:
            assert "versions 4 left it out" in str(error)
        else:
            raise AssertionError("join returned without a spec listing the address")
        publish_spec(store, ClusterSpec(5, ("127.0.0.1:1",)))
        with join(store, "127.0.0.1:1", min_version=3, timeout_s=5) as comm:
            assert (comm.cluster_version, comm.rank, comm.size) == (5, 0, 1)
