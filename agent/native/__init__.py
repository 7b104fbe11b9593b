"""Collective communication for training workers over TCP.

A typed facade over the private C++ extension ``agent.native._collective``.
Workers build one :class:`Communicator` per cluster version from the peer list
the control plane hands out, then call collectives on NumPy arrays (float32,
float64, float16, int32, int64): :meth:`Communicator.allreduce` (in place;
ring, binary tree or star, chosen by size), :meth:`~Communicator.broadcast`,
:meth:`~Communicator.allgather`, :meth:`~Communicator.reduce_scatter`,
:meth:`~Communicator.grouped_allreduce` (tensor fusion),
:meth:`~Communicator.consensus` and :meth:`~Communicator.barrier`. Every
blocking call releases the GIL and has a timeout: a peer that dies raises
:class:`CollectiveError`, a peer that goes silent raises
:class:`CollectiveTimeout`, and neither ever hangs the worker.
After such a failure the communicator is closed; form a new one.

Tunables, read once per process: ``COLLECTIVE_TIMEOUT`` (seconds, used when
``timeout_s`` is None), ``COLLECTIVE_RING_BLOCK_BYTES``,
``COLLECTIVE_SOCKET_BUFFER_BYTES``, ``COLLECTIVE_CONNECT_RETRY_MS``,
``COLLECTIVE_AUTO_RING_MIN_BYTES``, ``COLLECTIVE_AUTO_STAR_MAX_RANKS``
(see docs/native.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agent.native._collective import CollectiveError, CollectiveTimeout
from agent.native._collective import Communicator as _NativeCommunicator
from agent.native._collective import segment_rows as _segment_rows

__all__ = [
    "AlgorithmName",
    "CollectiveError",
    "CollectiveTimeout",
    "Communicator",
    "ReduceOpName",
]

ReduceOpName = Literal["sum", "mean", "min", "max"]
AlgorithmName = Literal["auto", "ring", "tree", "star"]

DEFAULT_TIMEOUT_S = 60.0
_REDUCE_OPS: tuple[str, ...] = ("sum", "mean", "min", "max")
_ALGORITHMS: tuple[str, ...] = ("auto", "ring", "tree", "star")
_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(name) for name in ("float32", "float64", "float16", "int32", "int64")
)


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


def _check_op(op: object, dtype: np.dtype) -> str:
    if op not in _REDUCE_OPS:
        raise ValueError(
            f"op={op!r} is not a reduction: use one of {', '.join(map(repr, _REDUCE_OPS))}"
        )
    if op == "mean" and dtype.kind == "i":
        raise ValueError(
            f'op="mean" is not defined for {dtype} (an integer mean would truncate): '
            'use op="sum" and divide, or convert to a float type first'
        )
    return str(op)


def _check_algorithm(algorithm: object, *, allow_none: bool) -> str:
    if algorithm is None and allow_none:
        return ""
    if algorithm not in _ALGORITHMS:
        raise ValueError(
            f"algorithm={algorithm!r} is not known: use one of {', '.join(map(repr, _ALGORITHMS))}"
        )
    return str(algorithm)


def _check_dtype(x: object, operation: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{operation} needs a numpy.ndarray, not {type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise ValueError(
            f"{operation} supports {', '.join(str(d) for d in _DTYPES)} arrays, got {x.dtype}: "
            "convert with x.astype(...)"
        )
    return x


def _check_array(x: object, operation: str) -> np.ndarray:
    """An array the collective works on in place."""
    x = _check_dtype(x, operation)
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
    to every peer, retrying until ``timeout_s``. The same ``timeout_s`` bounds
    how long any collective may go without data moving. ``timeout_s=None``
    reads ``COLLECTIVE_TIMEOUT`` (seconds, default 60).

    ``algorithm`` (``"auto"``, ``"ring"``, ``"tree"`` or ``"star"``) is used by
    calls that do not name one; every rank must pass the same, and the ranks
    check that (and their ``COLLECTIVE_AUTO_*`` settings) before construction
    returns, raising ``ValueError`` on every rank otherwise.

    All ranks must call the same collectives in the same order with arrays of
    the same shape and dtype, the same op, root and algorithm; a mismatch
    raises :class:`CollectiveError` rather than producing wrong numbers.
    Calls from several threads run one at a time.
    """

    def __init__(
        self,
        rank: int,
        peers: Sequence[str],
        timeout_s: float | None = None,
        algorithm: AlgorithmName = "auto",
    ) -> None:
        peer_list = _check_peers(rank, peers)
        self._native = _NativeCommunicator(
            rank,
            peer_list,
            _check_timeout(timeout_s),
            _check_algorithm(algorithm, allow_none=False),
        )
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

    @property
    def algorithm(self) -> str:
        """The algorithm used by calls that name none (see set_algorithm)."""
        return self._native.algorithm

    def allreduce(
        self, x: npt.NDArray[Any], op: ReduceOpName = "sum", algorithm: AlgorithmName | None = None
    ) -> npt.NDArray[Any]:
        """Reduce ``x`` across all ranks, in place, and return ``x``.

        ``x`` is a C-contiguous, writeable float32, float64, float16, int32 or
        int64 array of any shape (including empty); ``op`` is ``"sum"``,
        ``"mean"``, ``"min"`` or ``"max"`` (``"mean"`` is refused for
        integers). float16 is combined in float32 and rounded back at every
        step; integer sums wrap around like NumPy's. Every rank ends with
        bit-identical results. ``algorithm`` overrides the communicator's for
        this call (every rank must pass the same).
        """
        _check_array(x, "allreduce")
        self._native.allreduce(
            x, _check_op(op, x.dtype), _check_algorithm(algorithm, allow_none=True)
        )
        return x

    def broadcast(
        self, x: npt.NDArray[Any], root: int = 0, algorithm: AlgorithmName | None = None
    ) -> npt.NDArray[Any]:
        """Overwrite ``x`` on every rank with rank ``root``'s ``x``, in place; return ``x``."""
        _check_array(x, "broadcast")
        if isinstance(root, bool) or not isinstance(root, (int, np.integer)):
            raise ValueError(f"root must be an int, not {type(root).__name__}")
        if not 0 <= root < self.size:
            raise ValueError(f"root {root} is out of range: use 0..{self.size - 1}")
        self._native.broadcast(x, int(root), _check_algorithm(algorithm, allow_none=True))
        return x

    def allgather(
        self, x: npt.NDArray[Any], algorithm: AlgorithmName | None = None
    ) -> npt.NDArray[Any]:
        """Every rank's ``x``, stacked: a new array of shape ``(size, *x.shape)``.

        Row ``r`` is rank ``r``'s ``x``. ``x`` is not modified.
        """
        x = _check_dtype(x, "allgather")
        x = x if x.flags.c_contiguous else np.ascontiguousarray(x)  # keeps 0-d arrays 0-d
        out = np.empty((self.size, *x.shape), dtype=x.dtype)
        self._native.allgather(x, out, _check_algorithm(algorithm, allow_none=True))
        return out

    def reduce_scatter(
        self, x: npt.NDArray[Any], op: ReduceOpName = "sum", algorithm: AlgorithmName | None = None
    ) -> npt.NDArray[Any]:
        """This rank's share of the reduction of ``x``, as a new array.

        The reduction is cut along axis 0 the way ``numpy.array_split(...,
        size)`` cuts it (the first ``len(x) % size`` ranks get one row more),
        and rank ``r`` receives piece ``r``. ``x`` (at least 1-D) is not
        modified.
        """
        checked_op = _check_op(op, _check_dtype(x, "reduce_scatter").dtype)
        if x.ndim == 0:
            raise ValueError("reduce_scatter needs an array of at least 1 dimension")
        x = np.ascontiguousarray(x)
        _, rows = _segment_rows(x.shape[0], self.size, self.rank)
        out = np.empty((rows, *x.shape[1:]), dtype=x.dtype)
        self._native.reduce_scatter(
            x, out, checked_op, _check_algorithm(algorithm, allow_none=True)
        )
        return out

    def grouped_allreduce(
        self,
        arrays: Sequence[npt.NDArray[Any]],
        op: ReduceOpName = "sum",
        algorithm: AlgorithmName | None = None,
    ) -> list[npt.NDArray[Any]]:
        """Allreduce many arrays in place with one collective per dtype (tensor fusion).

        The arrays are packed into one buffer, reduced together and unpacked,
        so a model's tens or hundreds of small gradients cost one collective's
        latency instead of one each. Every rank must pass arrays of the same
        shapes in the same order. Returns the list of the same arrays.
        """
        if isinstance(arrays, np.ndarray) or not isinstance(arrays, Sequence):
            raise ValueError("grouped_allreduce needs a list of numpy arrays")
        checked = [_check_array(a, f"grouped_allreduce (array {i})") for i, a in enumerate(arrays)]
        for array in checked:
            _check_op(op, array.dtype)
        self._native.grouped_allreduce(
            checked, str(op), _check_algorithm(algorithm, allow_none=True)
        )
        return checked

    def consensus(self, data: bytes) -> bool:
        """True on every rank if every rank passed the same bytes, else False on every rank.

        Lengths may differ (that is a disagreement, not an error).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"consensus needs bytes, not {type(data).__name__}")
        return self._native.consensus(bytes(data))

    def set_algorithm(self, name: AlgorithmName) -> None:
        """Switch the default algorithm from the next call on; collective.

        Every rank must call it with the same name: the ranks agree by
        consensus first, and if they disagree every rank raises ``ValueError``
        and the algorithm stays as it was.
        """
        self._native.set_algorithm(_check_algorithm(name, allow_none=False))

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
