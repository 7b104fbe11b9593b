"""TCP loopback ceilings for a two-rank allreduce, one JSON line each.

    python -m bench.tcp_ceiling [--bytes 32M] [--repeats 20] [--mode oneway,twoway]

``oneway``: one process sends ``--bytes`` to another ``--repeats`` times (as
``../shared/bench/peer_allreduce.py tcp``, the ceiling the issues quote).
``twoway``: two processes each send and receive ``--bytes`` at once (a sender
thread beside the receiving loop in each), which is what a two-rank ring
allreduce does: each rank sends its half and receives the other's, then the
same again with the reduced halves, so every byte of the buffer crosses the
loopback in each direction at the same time. Its figure is GB/s per
direction, directly comparable with the allreduce's busbw at np = 2 (busbw =
algbw there). On two cores the kernel's copies in and out of the sockets of
both directions share the same cores, so two-way is well below one-way.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time

from bench.allreduce import parse_size

WARMUP = 2


def _receive(conn: socket.socket, buffer: memoryview) -> None:
    got = 0
    while got < len(buffer):
        received = conn.recv_into(buffer[got:])
        if received == 0:
            raise ConnectionError("the peer closed the connection early")
        got += received


def _sender(conn: socket.socket, data: memoryview, count: int) -> threading.Thread:
    def send() -> None:
        for _ in range(count):
            conn.sendall(data)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def measure(nbytes: int, repeats: int, twoway: bool) -> float:
    """GB/s received by the measuring process (per direction when twoway)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the peer
        try:
            peer = socket.create_connection(("127.0.0.1", port))
            out = memoryview(bytearray(nbytes))
            if twoway:
                peer_sender = _sender(peer, out, WARMUP + repeats)
                peer_inbox = memoryview(bytearray(nbytes))
                for _ in range(WARMUP + repeats):
                    _receive(peer, peer_inbox)
                peer_sender.join()
            else:
                for _ in range(WARMUP + repeats):
                    peer.sendall(out)
            peer.close()
        finally:
            os._exit(0)
    conn, _ = server.accept()
    server.close()
    inbox = memoryview(bytearray(nbytes))
    thread = _sender(conn, memoryview(bytearray(nbytes)), WARMUP + repeats) if twoway else None
    for _ in range(WARMUP):
        _receive(conn, inbox)
    started = time.perf_counter()
    for _ in range(repeats):
        _receive(conn, inbox)
    elapsed = time.perf_counter() - started
    if thread is not None:
        thread.join()
    conn.close()
    os.waitpid(pid, 0)
    return nbytes * repeats / elapsed / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bytes", type=parse_size, default=32 << 20)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--mode", default="oneway,twoway")
    args = parser.parse_args(argv)
    for mode in args.mode.split(","):
        if mode not in ("oneway", "twoway"):
            parser.error(f"--mode {mode!r}: use oneway and/or twoway")
        gbps = measure(args.bytes, args.repeats, mode == "twoway")
        line = {"op": f"tcp_{mode}", "backend": "loopback", "bytes": args.bytes}
        line["GBps_per_direction" if mode == "twoway" else "GBps"] = round(gbps, 4)
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
