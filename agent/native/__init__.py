"""Collective communication for training workers: allreduce and barrier over TCP.

A typed facade over the private C++ extension ``agent.native._collective``.
Workers build one :class:`Communicator` per cluster version from the peer list
the control plane hands out, then call :meth:`Communicator.allreduce` on
float32 NumPy arrays (in place, bandwidth-optimal ring) and
:meth:`Communicator.barrier`. Every blocking call releases the GIL and has a
timeout: a peer that dies raises :class:`CollectiveError`, a peer that goes
silent raises :class:`CollectiveTimeout`, and neither ever hangs the worker.
After such a failure the communicator is closed; form a new one.

Tunables, read once per process: ``COLLECTIVE_TIMEOUT`` (seconds, used when
``timeout_s`` is None), ``COLLECTIVE_RING_BLOCK_BYTES``,
``COLLECTIVE_SOCKET_BUFFER_BYTES``, ``COLLECTIVE_CONNECT_RETRY_MS``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from types import TracebackType
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.native._collective import CollectiveError, CollectiveTimeout
from agent.native._collective import Communicator as _NativeCommunicator

__all__ = ["CollectiveError", "CollectiveTimeout", "Communicator", "ReduceOpName"]

ReduceOpName = Literal["sum", "mean", "min", "max"]

DEFAULT_TIMEOUT_S = 60.0
_REDUCE_OPS: tuple[str, ...] = ("sum", "mean", "min", "max")


def _timeout_from_env() -> float:
    raw = os.environ.get("COLLECTIVE_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"COLLECTIVE_TIMEOUT={raw!r} is not valid: set a positive number of seconds"
        )
    return value


def _check_timeout(timeout_s: float | None) -> float:
    if timeout_s is None:
        return _timeout_from_env()
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise ValueError(
            f"timeout_s must be a number of seconds or None, not {type(timeout_s).__name__}"
        )
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s!r} is not valid: use a positive number of seconds")
    return float(timeout_s)


def _check_peers(rank: int, peers: Sequence[str]) -> list[str]:
    if isinstance(peers, str) or not isinstance(peers, Sequence):
        raise ValueError('peers must be a list of "host:port" strings, one per rank')
    peer_list = list(peers)
    if not peer_list:
        raise ValueError('peers is empty: give one "host:port" string per rank')
    for index, peer in enumerate(peer_list):
        if not isinstance(peer, str):
            raise ValueError(
                f'peers[{index}] must be a "host:port" string, not {type(peer).__name__}'
            )
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ValueError(f"rank must be an int, not {type(rank).__name__}")
    if not 0 <= rank < len(peer_list):
        raise ValueError(
            f"rank {rank} is out of range for {len(peer_list)} peers: use 0..{len(peer_list) - 1}"
        )
    return peer_list


def _check_array(x: object, operation: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{operation} needs a numpy.ndarray, not {type(x).__name__}")
    if x.dtype != np.float32:
        raise ValueError(
            f"{operation} supports float32 arrays only, got {x.dtype}: convert with x.astype(numpy.float32)"
        )
    if not x.flags.c_contiguous:
        raise ValueError(
            f"{operation} needs a C-contiguous array (it works in place): "
            "pass numpy.ascontiguousarray(x) and use the returned array"
        )
    if not x.flags.writeable:
        raise ValueError(f"{operation} works in place and needs a writeable array: pass x.copy()")
    return x


class Communicator:
    """One rank's membership in a group that runs collectives together.

    ``peers[r]`` is the ``"host:port"`` rank ``r`` listens on; every rank must
    be given the same list. Construction blocks until this rank is connected
    to the peers its algorithms need, retrying until ``timeout_s``. The same
    ``timeout_s`` bounds how long any collective may go without data moving.
    ``timeout_s=None`` reads ``COLLECTIVE_TIMEOUT`` (seconds, default 60).

    All ranks must call the same collectives in the same order with arrays of
    the same size; a mismatch raises :class:`CollectiveError` rather than
    producing wrong numbers. Calls from several threads run one at a time.
    """

    def __init__(self, rank: int, peers: Sequence[str], timeout_s: float | None = None) -> None:
        peer_list = _check_peers(rank, peers)
        self._native = _NativeCommunicator(rank, peer_list, _check_timeout(timeout_s))
        self._peers = tuple(peer_list)

    @property
    def rank(self) -> int:
        return self._native.rank

    @property
    def size(self) -> int:
        return self._native.size

    @property
    def peers(self) -> tuple[str, ...]:
        return self._peers

    @property
    def timeout_s(self) -> float:
        return self._native.timeout_s

    @property
    def closed(self) -> bool:
        return self._native.closed

    def allreduce(
        self, x: npt.NDArray[np.float32], op: ReduceOpName = "sum"
    ) -> npt.NDArray[np.float32]:
        """Reduce ``x`` across all ranks, in place, and return ``x``.

        ``x`` is a C-contiguous, writeable float32 array of any shape
        (including empty); ``op`` is ``"sum"``, ``"mean"``, ``"min"`` or
        ``"max"``. Every rank ends with bit-identical results.
        """
        _check_array(x, "allreduce")
        if op not in _REDUCE_OPS:
            raise ValueError(
                f"op={op!r} is not a reduction: use one of {', '.join(map(repr, _REDUCE_OPS))}"
            )
        self._native.allreduce(x, op)
        return x

    def barrier(self) -> None:
        """Return once every rank has called barrier()."""
        self._native.barrier()

    def close(self) -> None:
        """Close the connections; idempotent. Peers' next collective fails."""
        self._native.close()

    def __enter__(self) -> Communicator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Communicator rank={self.rank} size={self.size} {state}>"
