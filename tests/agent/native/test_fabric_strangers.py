"""Strangers on a worker's collective and blob ports (issue 18, attack 3), over
real sockets: an idle connection and one that sends junk are dropped after the accepting
rank's short per-connection handshake deadline, and the real ranks still form and
compute. On the code before the deadline (one budget for the whole rendezvous) the idle
connection made the accepting rank wait out its whole timeout_s and fail. A connection
that trickles a blob request is cut 2 s after it started, so a real peer's request goes
through; before, the server (one request at a time, an inactivity budget that every byte
renewed) made the real request time out.

A stranger that speaks the handshake correctly but cannot prove membership of the
run: test_fabric_membership.py."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
from native_ranks import own_listening_ports, run_ranks

from agent.native import Communicator

TIMEOUT_S = 15  # well beyond the 2 s per-connection deadline


def _connect(address: str, deadline: float) -> socket.socket:
    host, port = address.rsplit(":", 1)
    while True:
        try:
            return socket.create_connection((host, int(port)), timeout=1)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _form_with_strangers(rank: int, peers: list[str]) -> tuple[float, list[float]]:
    strangers = []
    started = time.monotonic()
    if rank == 0:
        # Before rank 0's own connection reaches rank 1's listener: an idle stranger
        # and one that sends 40 bytes of junk (then stays).
        idle = _connect(peers[1], started + TIMEOUT_S)
        junk = _connect(peers[1], started + TIMEOUT_S)
        junk.sendall(b"\xff" * 40)
        strangers = [idle, junk]
    comm = Communicator(rank, peers, timeout_s=TIMEOUT_S)
    formed = time.monotonic() - started
    x = np.full(1000, rank + 1.0)
    comm.allreduce(x, op="sum")
    comm.close()
    for s in strangers:
        s.close()
    return formed, sorted(set(x.tolist()))


def test_an_idle_and_a_junk_stranger_do_not_stop_formation() -> None:
    results = run_ranks(_form_with_strangers, 2, timeout_s=TIMEOUT_S + 30)
    for rank in (0, 1):
        formed, values = results[rank]
        assert values == [3.0]
        # One per-connection deadline (2 s) for the idle stranger, not timeout_s.
        assert formed < TIMEOUT_S / 2, (rank, formed)


def _request_beside_a_trickler(rank: int, peers: list[str]) -> tuple[float, float] | None:
    comm = Communicator(rank, peers, timeout_s=TIMEOUT_S)
    port = np.zeros(1, dtype=np.int64)
    if rank == 0:
        comm.publish("model", np.arange(100, dtype=np.float32))
        (port[0],) = own_listening_ports()
    comm.broadcast(port, root=0)
    result = None
    if rank == 1:
        host = peers[0].rsplit(":", 1)[0]
        trickler = socket.create_connection((host, int(port[0])), timeout=5)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.is_set():  # one byte of a request every 0.2 s
                try:
                    trickler.sendall(b"B")
                except OSError:
                    return
                stop.wait(0.2)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        time.sleep(0.5)  # the server is now reading the trickler's request
        out = np.zeros(100, dtype=np.float32)
        started = time.monotonic()
        comm.request(0, "model", out, timeout_s=6)
        elapsed = time.monotonic() - started
        stop.set()
        thread.join()
        trickler.close()
        assert out.tolist() == list(range(100))
        result = (elapsed, 0.0)
    comm.barrier()
    comm.close()
    return result


def test_a_trickling_connection_does_not_time_out_a_real_peers_blob_request() -> None:
    results = run_ranks(_request_beside_a_trickler, 2, timeout_s=TIMEOUT_S + 30)
    elapsed, _ = results[1]
    # The trickler is cut 2 s after it started its request; the real one then goes.
    assert elapsed < 5, elapsed
