"""Run a function on N spawned processes, one per rank, over real loopback sockets.

Shared by the native library's tests. Each rank gets free ports picked by
binding port 0, and what every rank returned (or the traceback it raised)
comes back through a queue, so a failure on any rank shows up in the report.
Rank bodies must be module-level functions so that spawn can import them.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from agent.local import peer_list

SPAWN = multiprocessing.get_context("spawn")


def free_peers(n: int) -> list[str]:
    return peer_list(n)


def _rank_main(
    target: Callable[..., Any], rank: int, peers: list[str], results: Any, args: tuple
) -> None:
    try:
        results.put((rank, "ok", target(rank, peers, *args)))
    except BaseException:  # noqa: BLE001 - the parent reports it
        results.put((rank, "error", traceback.format_exc()))


def run_ranks(
    target: Callable[..., Any],
    n: int,
    *args: Any,
    timeout_s: float = 60.0,
    peers: list[str] | None = None,
) -> dict[int, Any]:
    """Run target(rank, peers, *args) in n processes; return {rank: result}.

    A rank that raised fails the test with its traceback. A rank that exited
    without a result (on purpose, in the failure tests) is simply absent.
    ``peers`` defaults to n free loopback addresses.
    """
    peers = peers if peers is not None else free_peers(n)
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=_rank_main, args=(target, rank, peers, results, args), daemon=True)
        for rank in range(n)
    ]
    for process in processes:
        process.start()
    collected: dict[int, tuple[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(collected) < n and time.monotonic() < deadline:
            try:
                rank, status, value = results.get(timeout=0.1)
                collected[rank] = (status, value)
            except queue.Empty:
                if all(not p.is_alive() for p in processes):
                    # Let the queue's feeder threads of exited ranks flush.
                    try:
                        while True:
                            rank, status, value = results.get(timeout=0.5)
                            collected[rank] = (status, value)
                    except queue.Empty:
                        break
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
    if (
        time.monotonic() >= deadline
        and len(collected) < n
        and any(p.exitcode is None for p in processes)
    ):
        pytest.fail(f"ranks {sorted(set(range(n)) - set(collected))} hung for {timeout_s} s")
    errors = {rank: value for rank, (status, value) in collected.items() if status == "error"}
    if errors:
        pytest.fail("\n".join(f"rank {rank} raised:\n{tb}" for rank, tb in sorted(errors.items())))
    return {rank: value for rank, (status, value) in collected.items()}


def own_listening_ports() -> list[int]:
    """This process's listening TCP ports (after formation: the blob server's only)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
