"""Argument checks of the :class:`~agent.native.Communicator` facade: each names the
argument, what it got and what to pass instead."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.native import _dlpack

DEFAULT_TIMEOUT_S = 60.0
_MAX_CLUSTER_VERSION = 2**63 - 1
_REDUCE_OPS: tuple[str, ...] = ("sum", "mean", "min", "max")
_ALGORITHMS: tuple[str, ...] = ("auto", "ring", "tree", "star", "hierarchical")
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


def _check_cluster_version(cluster_version: object) -> int:
    if isinstance(cluster_version, bool) or not isinstance(cluster_version, (int, np.integer)):
        raise ValueError(f"cluster_version must be an int, not {type(cluster_version).__name__}")
    if not 0 <= cluster_version <= _MAX_CLUSTER_VERSION:
        raise ValueError(f"cluster_version={cluster_version} is not valid: use 0..2**63-1")
    return int(cluster_version)


def _check_peer(peer: object, size: int) -> int:
    if isinstance(peer, bool) or not isinstance(peer, (int, np.integer)):
        raise ValueError(f"peer must be an int rank, not {type(peer).__name__}")
    if not 0 <= peer < size:
        raise ValueError(f"peer {peer} is out of range: use 0..{size - 1}")
    return int(peer)


def _check_blob_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a blob name must be a non-empty str, not {name!r}")
    if len(name.encode()) > 1024:
        raise ValueError("a blob name must be at most 1024 bytes (UTF-8)")
    return name


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


def _tensor_dtype(x: Any) -> np.dtype:
    """A DLPack tensor's dtype for the checks (float32 when NumPy has no such name: the
    native module then says which dtypes it supports)."""
    try:
        return np.dtype(_dlpack.dtype_name(x))
    except TypeError:
        return np.dtype("float32")
