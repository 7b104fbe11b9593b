"""Collective communication for training workers over TCP.

A typed facade over the private C++ extension ``agent.native._collective``.
Workers build one :class:`Communicator` per cluster version from the peer list
the control plane hands out (``cluster_version=``; see
:mod:`agent.native.elastic` for joining through a :mod:`~agent.native.store`),
then call collectives on NumPy arrays (float32, float64, float16, int32,
int64): :meth:`Communicator.allreduce` (in place; ring, binary tree or star,
chosen by size), :meth:`~Communicator.broadcast`,
:meth:`~Communicator.allgather`, :meth:`~Communicator.reduce_scatter`,
:meth:`~Communicator.grouped_allreduce` (tensor fusion),
:meth:`~Communicator.consensus` and :meth:`~Communicator.barrier`, or their
``*_async`` forms, which return a :class:`Handle` at once. Ranks also share
named arrays peer to peer (:meth:`~Communicator.publish` and
:meth:`~Communicator.request`, for pair averaging), without the owner making
a matching call. :meth:`~Communicator.allreduce` and :meth:`~Communicator.broadcast`
also take DLPack tensors (torch, CuPy): host ones in place as NumPy arrays, CUDA ones
staged through pinned host memory in chunks (:mod:`agent.native._dlpack`).
Every blocking call releases the GIL and has a timeout: a
peer that dies raises :class:`CollectiveError`, a peer that goes silent raises
:class:`CollectiveTimeout`, and neither ever hangs the worker.
After such a failure the communicator is closed; form a new one.

Tunables, read once per process: ``COLLECTIVE_TIMEOUT`` (seconds, used when
``timeout_s`` is None), ``COLLECTIVE_RING_BLOCK_BYTES``,
``COLLECTIVE_SOCKET_BUFFER_BYTES``, ``COLLECTIVE_CONNECT_RETRY_MS``,
``COLLECTIVE_AUTO_RING_MIN_BYTES``, ``COLLECTIVE_AUTO_STAR_MAX_RANKS``
(see docs/native.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from agent.native import _dlpack
from agent.native._checks import (
    _ALGORITHMS,
    _check_algorithm,
    _check_array,
    _check_blob_name,
    _check_cluster_version,
    _check_dtype,
    _check_op,
    _check_peer,
    _check_peers,
    _check_timeout,
    _tensor_dtype,
)
from agent.native._collective import CollectiveError, CollectiveTimeout
from agent.native._collective import Communicator as _NativeCommunicator
from agent.native._collective import segment_rows as _segment_rows
from agent.native._handles import Handle, _CallQueue

__all__ = [
    "AlgorithmName",
    "CollectiveError",
    "CollectiveTimeout",
    "Communicator",
    "Handle",
    "ReduceOpName",
]

T = TypeVar("T")

ReduceOpName = Literal["sum", "mean", "min", "max"]
AlgorithmName = Literal["auto", "ring", "tree", "star", "hierarchical"]


class Communicator:
    """One rank's membership in a group that runs collectives together.

    ``peers[r]`` is the ``"host:port"`` rank ``r`` listens on; every rank must
    be given the same list. Construction blocks until this rank is connected
    to every peer, retrying until ``timeout_s``. The same ``timeout_s`` bounds
    how long any collective may go without data moving. ``timeout_s=None``
    reads ``COLLECTIVE_TIMEOUT`` (seconds, default 60).

    ``algorithm`` (``"auto"``, ``"ring"``, ``"tree"``, ``"star"`` or ``"hierarchical"``:
    reduce inside each node first when the group spans several hosts and some host
    has several ranks, else the ring; ``"auto"`` does the same for large buffers) is
    used by calls that do not name one; every rank must pass the same, and the ranks
    check that (and their ``COLLECTIVE_AUTO_*`` and
    ``COLLECTIVE_HIERARCHICAL_CHUNK_BYTES`` settings) before construction
    returns, raising ``ValueError`` on every rank otherwise.

    ``cluster_version`` (elastic sessions): ranks only connect to processes
    built with the same version; a connection from another version is refused
    and never joins the group, and a rank that keeps meeting one retries until
    ``timeout_s``, then raises :class:`CollectiveTimeout` saying that peers at
    another cluster version were seen. To resize, close this communicator and
    build the next version's from the next member list (survivors reconnect;
    they may keep their addresses: the listening port is free again once the
    group has formed, and is reused with ``SO_REUSEADDR``).

    ``fabric_secret``: the run's secret, which every connection between ranks
    (collective links, shared-memory set-up, peer blobs) proves it holds with
    a challenge-response, so that a process of another job or run, or a
    stranger on the network, is refused (and logged with its address on
    stderr) without disturbing the group. ``None`` reads
    ``ADAPTRAIN_FABRIC_SECRET``, which the agent sets for the workers of a
    run; every rank must hold the same. With no secret at all (an empty one)
    the handshake proves nothing (see docs/security.md).

    All ranks must call the same collectives in the same order with arrays of
    the same shape and dtype, the same op, root and algorithm; a mismatch
    raises :class:`CollectiveError` rather than producing wrong numbers.
    Calls from several threads run one at a time. The ``*_async`` forms run
    on one background thread in submission order: every rank must submit them
    in the same order, and a synchronous collective first waits for the
    asynchronous ones submitted before it. :meth:`publish` and
    :meth:`request` are not collective and never wait for a collective.
    """

    def __init__(
        self,
        rank: int,
        peers: Sequence[str],
        timeout_s: float | None = None,
        algorithm: AlgorithmName = "auto",
        cluster_version: int = 0,
        fabric_secret: str | None = None,
    ) -> None:
        peer_list = _check_peers(rank, peers)
        if fabric_secret is not None and not isinstance(fabric_secret, str):
            raise ValueError(
                f"fabric_secret must be a str or None, not {type(fabric_secret).__name__}"
            )
        self._native = _NativeCommunicator(
            rank,
            peer_list,
            _check_timeout(timeout_s),
            _check_algorithm(algorithm, allow_none=False),
            _check_cluster_version(cluster_version),
            fabric_secret,
        )
        self._peers = tuple(peer_list)
        self._calls: _CallQueue | None = None
        self._calls_lock = threading.Lock()

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
    def cluster_version(self) -> int:
        """The cluster version this group was formed at."""
        return self._native.cluster_version

    @property
    def timeout_s(self) -> float:
        return self._native.timeout_s

    @property
    def closed(self) -> bool:
        return self._native.closed

    @property
    def links(self) -> tuple[str, ...]:
        """Per rank, how data reaches it from this rank: "self", "shm" or "tcp".

        Ranks whose peer addresses share the host part use shared memory
        unless COLLECTIVE_LOCAL_TRANSPORT=tcp (see docs/native.md).
        """
        return tuple(self._native.links)

    @property
    def algorithm(self) -> str:
        """The algorithm used by calls that name none (see set_algorithm)."""
        return self._native.algorithm

    @property
    def nodes(self) -> tuple[int, ...]:
        """Per rank, the node it is on (0, 1, ... in order of first rank).

        Ranks whose peer addresses share the host part are one node; the
        ``"hierarchical"`` algorithm reduces inside each node first.
        """
        return tuple(self._native.nodes)

    def allreduce_algorithm(
        self, count: int, dtype: Any = "float32", algorithm: AlgorithmName | None = None
    ) -> str:
        """The algorithm an allreduce of ``count`` elements would run ("ring", "tree",
        "star" or "hierarchical"), given ``algorithm`` or the communicator's own."""
        if algorithm is not None and algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm {algorithm!r} is not known: use one of {_ALGORITHMS}")
        return self._native.allreduce_algorithm(
            int(count), np.dtype(dtype).itemsize, algorithm or ""
        )

    def broadcast_algorithm(
        self, count: int, dtype: Any = "float32", algorithm: AlgorithmName | None = None
    ) -> str:
        """The algorithm a broadcast of ``count`` elements would run ("ring" is a chain
        from the root; "hierarchical" a chain across nodes and one inside each)."""
        if algorithm is not None and algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm {algorithm!r} is not known: use one of {_ALGORITHMS}")
        return self._native.broadcast_algorithm(
            int(count), np.dtype(dtype).itemsize, algorithm or ""
        )

    def allgather_algorithm(
        self, count: int, dtype: Any = "float32", algorithm: AlgorithmName | None = None
    ) -> str:
        """The algorithm an allgather of ``count`` elements per rank would run."""
        if algorithm is not None and algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm {algorithm!r} is not known: use one of {_ALGORITHMS}")
        return self._native.allgather_algorithm(
            int(count), np.dtype(dtype).itemsize, algorithm or ""
        )

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

        ``x`` may also be a DLPack tensor (torch, CuPy) of those dtypes: on the host it
        is reduced in place like a NumPy array; in CUDA memory it is staged through a
        pinned host buffer in chunks pipelined with the collective, ordered after the
        work on the producer's current stream, and the result is in device memory when
        the call returns. Every rank must pass the same kind (all host or all CUDA): a
        staged call is one collective per chunk. See docs/native.md, "CUDA tensors".
        """
        return self._run_now(self._allreduce_call(x, op, algorithm))

    def allreduce_async(
        self, x: npt.NDArray[Any], op: ReduceOpName = "sum", algorithm: AlgorithmName | None = None
    ) -> Handle[npt.NDArray[Any]]:
        """:meth:`allreduce` in the background: returns at once; ``wait()`` returns ``x``.

        Arguments are checked now (``ValueError`` raises here); ``x`` belongs
        to the call until it has finished.
        """
        return self._submit(self._allreduce_call(x, op, algorithm), "allreduce")

    def broadcast(
        self, x: npt.NDArray[Any], root: int = 0, algorithm: AlgorithmName | None = None
    ) -> npt.NDArray[Any]:
        """Overwrite ``x`` on every rank with rank ``root``'s ``x``, in place; return ``x``.

        ``x`` may be a DLPack tensor, host or CUDA, as for :meth:`allreduce`."""
        return self._run_now(self._broadcast_call(x, root, algorithm))

    def broadcast_async(
        self, x: npt.NDArray[Any], root: int = 0, algorithm: AlgorithmName | None = None
    ) -> Handle[npt.NDArray[Any]]:
        """:meth:`broadcast` in the background: returns at once; ``wait()`` returns ``x``."""
        return self._submit(self._broadcast_call(x, root, algorithm), "broadcast")

    def allgather(
        self, x: npt.NDArray[Any], algorithm: AlgorithmName | None = None
    ) -> npt.NDArray[Any]:
        """Every rank's ``x``, stacked: a new array of shape ``(size, *x.shape)``.

        Row ``r`` is rank ``r``'s ``x``. ``x`` is not modified.
        """
        return self._run_now(self._allgather_call(x, algorithm))

    def allgather_async(
        self, x: npt.NDArray[Any], algorithm: AlgorithmName | None = None
    ) -> Handle[npt.NDArray[Any]]:
        """:meth:`allgather` in the background: ``wait()`` returns the stacked array."""
        return self._submit(self._allgather_call(x, algorithm), "allgather")

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
        checked_algorithm = _check_algorithm(algorithm, allow_none=True)
        self._drain()
        self._native.reduce_scatter(x, out, checked_op, checked_algorithm)
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
        return self._run_now(self._grouped_allreduce_call(arrays, op, algorithm))

    def grouped_allreduce_async(
        self,
        arrays: Sequence[npt.NDArray[Any]],
        op: ReduceOpName = "sum",
        algorithm: AlgorithmName | None = None,
    ) -> Handle[list[npt.NDArray[Any]]]:
        """:meth:`grouped_allreduce` in the background: ``wait()`` returns the list.

        This is how a training step overlaps communication with computation:
        submit each bucket of gradients as soon as backward has produced it,
        and wait for all handles before the optimizer step.
        """
        return self._submit(
            self._grouped_allreduce_call(arrays, op, algorithm), "grouped_allreduce"
        )

    def consensus(self, data: bytes) -> bool:
        """True on every rank if every rank passed the same bytes, else False on every rank.

        Lengths may differ (that is a disagreement, not an error).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"consensus needs bytes, not {type(data).__name__}")
        payload = bytes(data)
        self._drain()
        return self._native.consensus(payload)

    def set_algorithm(self, name: AlgorithmName) -> None:
        """Switch the default algorithm from the next call on; collective.

        Every rank must call it with the same name: the ranks agree by
        consensus first, and if they disagree every rank raises ``ValueError``
        and the algorithm stays as it was.
        """
        checked = _check_algorithm(name, allow_none=False)
        self._drain()
        self._native.set_algorithm(checked)

    def set_ring_order(self, order: Sequence[int]) -> None:
        """Pass the ring allreduce's data in this order of ranks from the next call on;
        collective.

        ``order`` names every rank once: rank ``order[i]`` sends to ``order[i + 1]``
        (and the last to the first), so a ring can avoid a slow path between two
        ranks. The ring allreduce (also grouped) follows it, and so does the tree
        allreduce (a binary tree over the order: its root is ``order[0]`` and the last
        ranks are leaves, so a slow node placed last carries the buffer only once each
        way); the ring's all-gather, reduce-scatter and broadcast keep rank order. Every rank must
        pass the same order (they agree by consensus first); otherwise every rank
        raises ``ValueError`` and the order stays as it was.
        """
        checked = [int(r) for r in order]
        if sorted(checked) != list(range(self.size)):
            raise ValueError(
                f"a ring order names every rank 0..{self.size - 1} once, got {list(order)!r}"
            )
        self._drain()
        self._native.set_ring_order(checked)

    @property
    def ring_order(self) -> tuple[int, ...]:
        """The order the ring allreduce passes data in (see set_ring_order)."""
        return tuple(self._native.ring_order)

    def barrier(self) -> None:
        """Return once every rank has called barrier()."""
        self._drain()
        self._native.barrier()

    def publish(self, name: str, array: npt.NDArray[Any]) -> int:
        """Store a copy of ``array`` under ``name`` for other ranks to :meth:`request`.

        Not collective: no other rank calls anything. Replaces the previous
        copy of ``name`` (a request already being answered finishes with the
        copy it started with) and returns the name's new version (1, 2, ...).
        Any shape of a supported dtype; names are non-empty strings of at most
        1024 bytes. Never waits for a collective.
        """
        _check_blob_name(name)
        array = _check_dtype(array, "publish")
        array = array if array.flags.c_contiguous else np.ascontiguousarray(array)
        return self._native.publish(name, array)

    def request(
        self, peer: int, name: str, out: npt.NDArray[Any], timeout_s: float | None = None
    ) -> npt.NDArray[Any]:
        """Fill ``out`` with rank ``peer``'s latest published copy of ``name``; return ``out``.

        Not collective: ``peer`` answers from a background thread whatever it
        is doing (computing, or in a collective), so it makes no matching
        call. ``out`` must have the blob's dtype and number of elements (its
        shape is up to the caller); otherwise, or if ``peer`` never published
        ``name``, ``ValueError`` names the blob and the peer. A peer that is
        gone raises :class:`CollectiveError`, one that stalls for
        ``timeout_s`` (default: the communicator's) without moving a byte
        :class:`CollectiveTimeout`; neither closes the
        communicator. ``peer`` may be this rank. Requests from several threads
        are safe and never wait for a collective on this communicator.
        """
        _check_array(out, "request")
        checked_peer = _check_peer(peer, self.size)
        wait_s = 0.0 if timeout_s is None else _check_timeout(timeout_s)
        self._native.request(checked_peer, _check_blob_name(name), out, wait_s)
        return out

    def close(self) -> None:
        """Close the connections and stop the blob service; idempotent. Peers' next collective fails.

        Asynchronous calls still queued fail with :class:`CollectiveError`.
        """
        self._native.close()
        with self._calls_lock:
            calls, self._calls = self._calls, None
        if calls is not None:
            calls.stop()

    # -- how calls run --------------------------------------------------------

    def _allreduce_call(
        self, x: npt.NDArray[Any], op: object, algorithm: object
    ) -> Callable[[], npt.NDArray[Any]]:
        if not isinstance(x, np.ndarray) and _dlpack.is_tensor(x):
            checked_op = _check_op(op, _tensor_dtype(x))
            checked_algorithm = _check_algorithm(algorithm, allow_none=True)
            operand: Any = _dlpack.export(x, "allreduce")  # now: orders the producer's stream
        else:
            _check_array(x, "allreduce")
            checked_op = _check_op(op, x.dtype)
            checked_algorithm = _check_algorithm(algorithm, allow_none=True)
            operand = x

        def call() -> npt.NDArray[Any]:
            self._native.allreduce(operand, checked_op, checked_algorithm)
            return x

        return call

    def _broadcast_call(
        self, x: npt.NDArray[Any], root: object, algorithm: object
    ) -> Callable[[], npt.NDArray[Any]]:
        tensor = not isinstance(x, np.ndarray) and _dlpack.is_tensor(x)
        if not tensor:
            _check_array(x, "broadcast")
        if isinstance(root, bool) or not isinstance(root, (int, np.integer)):
            raise ValueError(f"root must be an int, not {type(root).__name__}")
        if not 0 <= root < self.size:
            raise ValueError(f"root {root} is out of range: use 0..{self.size - 1}")
        checked_root = int(root)
        checked_algorithm = _check_algorithm(algorithm, allow_none=True)
        operand = _dlpack.export(x, "broadcast") if tensor else x

        def call() -> npt.NDArray[Any]:
            self._native.broadcast(operand, checked_root, checked_algorithm)
            return x

        return call

    def _allgather_call(
        self, x: npt.NDArray[Any], algorithm: object
    ) -> Callable[[], npt.NDArray[Any]]:
        if not isinstance(x, np.ndarray) and _dlpack.is_tensor(x):
            if _dlpack.device_of(x, "allgather")[0] == _dlpack.KDL_CUDA:
                raise ValueError(
                    "allgather takes host arrays; this tensor is in CUDA memory: pass x.cpu() "
                    "(only allreduce and broadcast stage CUDA tensors)"
                )
            x = np.from_dlpack(x)  # a view; allgather only reads it
        x = _check_dtype(x, "allgather")
        x = x if x.flags.c_contiguous else np.ascontiguousarray(x)  # keeps 0-d arrays 0-d
        out = np.empty((self.size, *x.shape), dtype=x.dtype)
        checked_algorithm = _check_algorithm(algorithm, allow_none=True)

        def call() -> npt.NDArray[Any]:
            self._native.allgather(x, out, checked_algorithm)
            return out

        return call

    def _grouped_allreduce_call(
        self, arrays: Sequence[npt.NDArray[Any]], op: object, algorithm: object
    ) -> Callable[[], list[npt.NDArray[Any]]]:
        if isinstance(arrays, np.ndarray) or not isinstance(arrays, Sequence):
            raise ValueError("grouped_allreduce needs a list of numpy arrays")
        checked = [_check_array(a, f"grouped_allreduce (array {i})") for i, a in enumerate(arrays)]
        for array in checked:
            _check_op(op, array.dtype)
        checked_algorithm = _check_algorithm(algorithm, allow_none=True)

        def call() -> list[npt.NDArray[Any]]:
            self._native.grouped_allreduce(checked, str(op), checked_algorithm)
            return checked

        return call

    def _run_now(self, call: Callable[[], T]) -> T:
        self._drain()
        return call()

    def _drain(self) -> None:
        # A synchronous collective must not overtake asynchronous ones
        # submitted before it: every rank's sequence of calls must match.
        calls = self._calls
        if calls is not None:
            calls.drain()

    def _submit(self, call: Callable[[], T], operation: str) -> Handle[T]:
        with self._calls_lock:
            if self._native.closed:
                # No thread for a closed communicator: the call fails at once.
                handle: Handle[T] = Handle(f"{operation} on rank {self.rank}")
                try:
                    handle._finish(call(), None)
                except BaseException as error:  # noqa: BLE001 - handed to wait()
                    handle._finish(None, error)
                return handle
            if self._calls is None:
                self._calls = _CallQueue(f"collective-async-rank{self.rank}")
            return self._calls.submit(call, f"{operation} on rank {self.rank}")

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
        return (
            f"<Communicator rank={self.rank} size={self.size} "
            f"cluster_version={self.cluster_version} {state}>"
        )
