"""Elastic membership: cluster specs in a store, and joining the group they describe.

Whoever decides membership (the control plane, a launcher, a test) publishes
a :class:`ClusterSpec` (a version number and the ``"host:port"`` of every
member, in rank order) with :func:`publish_spec`; it lands under
``cluster/<version>`` and ``cluster/latest`` of a :class:`~agent.native.store.Store`.
A worker calls :func:`join` with its own address: it waits for a spec at
least as new as the one it asks for that lists that address, and builds the
:class:`~agent.native.Communicator` of that version with its rank = its index
in the list. To resize, publish the next version; every member (survivors
and newcomers alike) closes its communicator, if it has one, and joins again
with ``min_version`` = the old version + 1. Survivors reconnect over TCP and
may keep their addresses. A process still at an older version is refused by
the new group (see ``cluster_version`` in :class:`~agent.native.Communicator`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from agent.native import AlgorithmName, Communicator
from agent.native.store import Store

__all__ = [
    "LATEST_KEY",
    "ClusterSpec",
    "join",
    "publish_spec",
    "spec_key",
    "wait_for_spec",
]

LATEST_KEY = "cluster/latest"


def spec_key(version: int) -> str:
    """The store key of one version's spec: ``cluster/<version>``."""
    return f"cluster/{version}"


@dataclass(frozen=True)
class ClusterSpec:
    """Who is in the group at one cluster version: ``members[r]`` is rank ``r``'s address."""

    version: int
    members: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise ValueError(f"version must be an int, not {type(self.version).__name__}")
        if not 0 <= self.version < 2**63:
            raise ValueError(f"version={self.version} is not valid: use 0..2**63-1")
        if isinstance(self.members, str) or not isinstance(self.members, (tuple, list)):
            raise ValueError('members must be a tuple of "host:port" strings')
        members = tuple(self.members)
        if not members:
            raise ValueError("a cluster spec needs at least one member")
        for member in members:
            if not isinstance(member, str) or ":" not in member:
                raise ValueError(f'member {member!r} is not a "host:port" string')
        if len(set(members)) != len(members):
            raise ValueError(f"members {list(members)} list an address twice")
        object.__setattr__(self, "members", members)

    def rank_of(self, address: str) -> int | None:
        """``address``'s rank at this version, or None if it is not a member."""
        return self.members.index(address) if address in self.members else None

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "members": list(self.members)})

    @classmethod
    def from_json(cls, text: str | bytes) -> ClusterSpec:
        """Parse :meth:`to_json`'s output; ``ValueError`` saying what is wrong otherwise."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"a cluster spec must be JSON: {error}") from None
        if not isinstance(data, dict) or set(data) != {"version", "members"}:
            raise ValueError(
                'a cluster spec must be a JSON object with exactly "version" and "members"'
            )
        if not isinstance(data["members"], list):
            raise ValueError('"members" must be a list of "host:port" strings')
        return cls(version=data["version"], members=tuple(data["members"]))


def publish_spec(store: Store, spec: ClusterSpec) -> None:
    """Write ``spec`` under ``cluster/<version>``, then ``cluster/latest``.

    The versioned key first, so that whoever sees ``latest`` can also read
    that version's key. Publishers must publish versions in increasing order.
    """
    data = spec.to_json().encode()
    store.set(spec_key(spec.version), data)
    store.set(LATEST_KEY, data)


def _check_version(min_version: object) -> int:
    if isinstance(min_version, bool) or not isinstance(min_version, int) or min_version < 0:
        raise ValueError(f"min_version={min_version!r} is not valid: use an int >= 0")
    return min_version


def wait_for_spec(
    store: Store, *, min_version: int, timeout_s: float, poll_interval_s: float = 0.05
) -> ClusterSpec:
    """The latest spec once its version is at least ``min_version``.

    Polls ``cluster/latest``; raises ``TimeoutError`` after ``timeout_s``,
    saying which version it saw last.
    """
    _check_version(min_version)
    deadline = time.monotonic() + timeout_s
    pause = min(0.005, poll_interval_s)
    seen: int | None = None
    while True:
        raw = store.get(LATEST_KEY)
        if raw is not None:
            spec = ClusterSpec.from_json(raw)
            if spec.version >= min_version:
                return spec
            seen = spec.version
        left = deadline - time.monotonic()
        if left <= 0:
            what = f"the latest is version {seen}" if seen is not None else "none was published"
            raise TimeoutError(
                f"no cluster spec at version >= {min_version} within {timeout_s:g} s "
                f"({what}; key {LATEST_KEY!r})"
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, poll_interval_s)


def join(
    store: Store,
    address: str,
    *,
    min_version: int,
    timeout_s: float,
    algorithm: AlgorithmName = "auto",
    collective_timeout_s: float | None = None,
) -> Communicator:
    """Wait for a spec at version >= ``min_version`` listing ``address``, and form its group.

    Specs that do not list ``address`` are skipped (this member was left out
    of that version; a later one may take it back). The communicator is built
    at the spec's version with rank = ``address``'s index, ``peers`` = the
    members and ``timeout_s`` = ``collective_timeout_s`` (default:
    ``timeout_s``), which bounds forming the group as well (so a join takes at
    most about the two budgets together). Raises
    ``TimeoutError`` if no such spec comes in time, naming the versions that
    left this address out, and whatever :class:`~agent.native.Communicator`
    raises if the group does not form (for instance because the members moved
    on to a newer version meanwhile: join again with that version).
    """
    min_version = _check_version(min_version)
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(f'address {address!r} is not a "host:port" string')
    deadline = time.monotonic() + timeout_s
    left_out: list[int] = []
    while True:
        left = deadline - time.monotonic()
        try:
            spec = wait_for_spec(store, min_version=min_version, timeout_s=max(left, 0.0))
        except TimeoutError as error:
            if not left_out:
                raise
            versions = ", ".join(map(str, left_out))
            raise TimeoutError(
                f"{address} is not a member of any cluster spec published within {timeout_s:g} s "
                f"(versions {versions} left it out); {error}"
            ) from None
        rank = spec.rank_of(address)
        if rank is not None:
            break
        left_out.append(spec.version)
        min_version = spec.version + 1
    return Communicator(
        rank,
        list(spec.members),
        timeout_s=timeout_s if collective_timeout_s is None else collective_timeout_s,
        algorithm=algorithm,
        cluster_version=spec.version,
    )
