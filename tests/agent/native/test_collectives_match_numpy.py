"""Every collective × algorithm × dtype × size against a NumPy reference, on 1–4 (and 8) ranks.

Sizes: 0, 1, 7 and 1001 elements (some ranks without a segment; divisible by
no rank count), 16 MiB on the ring, and a 64 MiB allreduce on the ring and
"auto" at np=2 and 4.

Starting processes is the slow part, so one spawned group per rank count runs
every case with one communicator, checks each result against NumPy itself
(every rank can rebuild every rank's input from the case's seed) and returns,
per case, either a digest of its result or what went wrong. The tests below
then only read that table: one test per collective and algorithm, failing
with the list of cases that did not match, and checking that every rank ended
with the same bits.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

import numpy as np
import pytest
from native_ranks import run_ranks

from agent.native import Communicator

ALGORITHMS = ("ring", "tree", "star")
FLOATS = ("float32", "float64", "float16")
INTS = ("int32", "int64")
OPS = ("sum", "mean", "min", "max")
# 0 and 1 leave some ranks without a segment, 7 does too at np=8, 1001 =
# 7·11·13 divides by none of 2..6 or 8. A 300_000-element float32 case (1.2 MB)
# makes "auto" pick the ring.
SIZES = (0, 1, 7, 1001)
LARGE = (16 << 20) // 4  # 16 MiB of float32, ring only
# 64 MiB of float32 for ring and auto at np=2 and 4: the size a real model's
# gradients reach. Its inputs are small integers times (rank + 1), so the sum
# is exact in float32 and checked without a float64 copy of every rank's input.
HUGE = (64 << 20) // 4
HUGE_RANK_COUNTS = (2, 4)
RANK_COUNTS = (1, 2, 3, 4, 8)


def case_list(n: int) -> list[tuple[Any, ...]]:
    """(collective, algorithm, dtype, op, size) for every case run on n ranks."""
    cases: list[tuple[Any, ...]] = []
    if n == 8:  # a small subset, to see deeper trees and longer rings
        for algorithm in (*ALGORITHMS, "auto"):
            for size in SIZES:
                cases.append(("allreduce", algorithm, "float32", "sum", size))
                cases.append(("broadcast", algorithm, "float32", 3, size))
                cases.append(("allgather", algorithm, "int64", None, size))
                cases.append(("reduce_scatter", algorithm, "float32", "sum", size))
            cases.append(("grouped_allreduce", algorithm, "mixed", "sum", 1001))
        return cases
    for algorithm in (*ALGORITHMS, "auto"):
        for dtype in FLOATS + INTS:
            for op in OPS:
                if op == "mean" and dtype in INTS:
                    continue
                for size in SIZES:
                    cases.append(("allreduce", algorithm, dtype, op, size))
        cases.append(("allreduce", algorithm, "float32", "sum", 300_000))
        for size in SIZES:
            for root in sorted({0, n - 1}):
                cases.append(("broadcast", algorithm, "float16", root, size))
            cases.append(("broadcast", algorithm, "int32", n // 2, size))
            cases.append(("allgather", algorithm, "float32", None, size))
            cases.append(("allgather", algorithm, "float16", None, size))
            for dtype, op in (("float32", "sum"), ("int64", "max"), ("float64", "mean")):
                cases.append(("reduce_scatter", algorithm, dtype, op, size))
        for op in ("sum", "max"):
            cases.append(("grouped_allreduce", algorithm, "mixed", op, 1001))
    for op in ("sum", "max"):
        cases.append(("allreduce", "ring", "float32", op, LARGE))
    cases.append(("broadcast", "ring", "float32", n - 1, LARGE))
    cases.append(("allgather", "ring", "float32", None, LARGE // 4))
    cases.append(("reduce_scatter", "ring", "float32", "sum", LARGE // 3))
    if n in HUGE_RANK_COUNTS:
        for algorithm in ("ring", "auto"):
            cases.append(("allreduce", algorithm, "float32", "sum", HUGE))
    return cases


def case_id(case: tuple[Any, ...]) -> str:
    return "-".join(str(part) for part in case)


def inputs(case: tuple[Any, ...], n: int, dtype: str, size: int) -> np.ndarray:
    """Every rank's input for a case, the same in every process: row r is rank r's."""
    rng = np.random.default_rng(zlib.crc32(f"{case_id(case)}/{n}".encode()))
    if dtype in INTS:
        # Near the top of the range, so that sums overflow and must wrap like NumPy's.
        limit = np.iinfo(dtype).max // 2
        return rng.integers(-limit, limit, size=(n, size), dtype=dtype)
    return (rng.random((n, size), dtype=np.float64) * 2 - 1).astype(dtype)


def reduce_reference(everyone: np.ndarray, op: str) -> np.ndarray:
    if op == "min":
        return np.minimum.reduce(everyone, axis=0)
    if op == "max":
        return np.maximum.reduce(everyone, axis=0)
    if everyone.dtype.kind == "i":
        return np.add.reduce(everyone, axis=0, dtype=everyone.dtype)  # wraps around
    wide = everyone.astype(np.float64)
    return wide.mean(axis=0) if op == "mean" else wide.sum(axis=0)


def check_close(got: np.ndarray, expected: np.ndarray, op: str) -> None:
    assert got.shape == expected.shape, f"shape {got.shape}, expected {expected.shape}"
    assert got.dtype == expected.dtype or op in ("sum", "mean"), f"dtype {got.dtype}"
    if op in ("min", "max") or got.dtype.kind == "i":
        np.testing.assert_array_equal(got, expected)
        return
    tolerance = {"float16": 2e-2, "float32": 1e-5, "float64": 1e-12}[str(got.dtype)]
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=tolerance, atol=tolerance)


def run_case(comm: Communicator, case: tuple[Any, ...]) -> np.ndarray:
    """Runs one case on this rank, checks it, and returns what to compare across ranks."""
    collective, algorithm, dtype, op, size = case
    n, rank = comm.size, comm.rank
    if collective == "allreduce" and size == HUGE:
        base = np.random.default_rng(zlib.crc32(case_id(case).encode())).integers(
            -1000, 1000, size=size, dtype=np.int32
        )
        x = base.astype(np.float32) * (rank + 1)
        assert comm.allreduce(x, op=op, algorithm=algorithm) is x
        np.testing.assert_array_equal(x, base.astype(np.float32) * (n * (n + 1) // 2))
        return x
    if collective == "allreduce":
        everyone = inputs(case, n, dtype, size)
        x = everyone[rank].copy()
        assert comm.allreduce(x, op=op, algorithm=algorithm) is x
        check_close(x, reduce_reference(everyone, op), op)
        return x
    if collective == "broadcast":
        root = op
        everyone = inputs(case, n, dtype, size)
        x = everyone[rank].copy()
        assert comm.broadcast(x, root=root, algorithm=algorithm) is x
        np.testing.assert_array_equal(x, everyone[root])
        return x
    if collective == "allgather":
        everyone = inputs(case, n, dtype, size)
        mine = everyone[rank].reshape(-1, 1) if size % 2 else everyone[rank]  # any shape
        gathered = comm.allgather(mine, algorithm=algorithm)
        assert gathered.shape == (n, *mine.shape)
        np.testing.assert_array_equal(gathered.reshape(n, -1), everyone)
        np.testing.assert_array_equal(mine.reshape(-1), everyone[rank])  # input untouched
        return gathered
    if collective == "reduce_scatter":
        everyone = inputs(case, n, dtype, size * 3).reshape(n, size, 3)
        mine = everyone[rank].copy()
        piece = comm.reduce_scatter(mine, op=op, algorithm=algorithm)
        expected = np.array_split(reduce_reference(everyone, op), n, axis=0)[rank]
        check_close(piece, expected, op)
        np.testing.assert_array_equal(mine, everyone[rank])  # input untouched
        return piece
    if collective == "grouped_allreduce":
        # A model's worth of tensors: mixed shapes, an empty one, two dtypes.
        shapes = [(size,), (3, 4), (0,), (1,), (5, 2)]
        dtypes = ["float32", "int64", "float32", "float64", "int64"]
        everyone = [
            inputs((*case, index), n, dt, int(np.prod(shape))).reshape(n, *shape)
            for index, (shape, dt) in enumerate(zip(shapes, dtypes, strict=True))
        ]
        mine = [tensor[rank].copy() for tensor in everyone]
        assert comm.grouped_allreduce(mine, op=op, algorithm=algorithm) == mine
        for got, tensor in zip(mine, everyone, strict=True):
            check_close(got, reduce_reference(tensor, op).astype(got.dtype, copy=False), op)
        return np.concatenate([tensor.reshape(-1).astype(np.float64) for tensor in mine])
    raise AssertionError(f"unknown collective {collective}")


def _every_case(rank: int, peers: list[str]) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    with Communicator(rank, peers, timeout_s=30) as comm:
        for case in case_list(len(peers)):
            try:
                result = run_case(comm, case)
                outcomes[case_id(case)] = "ok " + hashlib.sha256(result.tobytes()).hexdigest()
            except AssertionError as error:
                outcomes[case_id(case)] = f"wrong: {error}"
        comm.barrier()
    return outcomes


@pytest.fixture(scope="module", params=RANK_COUNTS, ids=lambda n: f"np{n}")
def outcomes(request: pytest.FixtureRequest) -> tuple[int, dict[int, dict[str, str]]]:
    n = request.param
    results = run_ranks(_every_case, n, timeout_s=150)
    assert sorted(results) == list(range(n))
    return n, results


def check_outcomes(
    outcomes: tuple[int, dict[int, dict[str, str]]], collective: str, algorithm: str
) -> None:
    n, results = outcomes
    prefix = f"{collective}-{algorithm}-"
    ids = [case_id(c) for c in case_list(n) if case_id(c).startswith(prefix)]
    assert ids, f"no {collective} cases with {algorithm} at np={n}"
    failures = []
    for cid in ids:
        per_rank = {rank: results[rank][cid] for rank in range(n)}
        wrong = {rank: text for rank, text in per_rank.items() if not text.startswith("ok")}
        if wrong:
            failures.append(f"{cid}: {wrong}")
        elif collective != "reduce_scatter" and len(set(per_rank.values())) != 1:
            failures.append(f"{cid}: the ranks ended with different bits")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("algorithm", (*ALGORITHMS, "auto"))
def test_allreduce_matches_numpy_for_every_dtype_op_and_size(outcomes, algorithm: str) -> None:
    check_outcomes(outcomes, "allreduce", algorithm)


@pytest.mark.parametrize("algorithm", (*ALGORITHMS, "auto"))
def test_broadcast_copies_the_roots_array_to_every_rank(outcomes, algorithm: str) -> None:
    check_outcomes(outcomes, "broadcast", algorithm)


@pytest.mark.parametrize("algorithm", (*ALGORITHMS, "auto"))
def test_allgather_stacks_every_ranks_array_in_rank_order(outcomes, algorithm: str) -> None:
    check_outcomes(outcomes, "allgather", algorithm)


@pytest.mark.parametrize("algorithm", (*ALGORITHMS, "auto"))
def test_reduce_scatter_gives_each_rank_its_array_split_piece(outcomes, algorithm: str) -> None:
    check_outcomes(outcomes, "reduce_scatter", algorithm)


@pytest.mark.parametrize("algorithm", (*ALGORITHMS, "auto"))
def test_grouped_allreduce_reduces_every_tensor_in_place(outcomes, algorithm: str) -> None:
    check_outcomes(outcomes, "grouped_allreduce", algorithm)
