"""Workers of one job on builds that speak different fabric protocols (one node not yet
upgraded): the handshake says so, names both protocol versions and which node to
upgrade, rather than failing with a generic handshake error or a timeout.

The older builds are played by this file over real sockets, speaking their wire formats
byte for byte: protocol 2 (adaptrain before fabric authentication: a hello and a reply),
protocol 3 (the first authenticated handshake: the accepting side opens with a
challenge), and a made-up protocol 5 for a newer build. The other side is a real rank
of this build.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from native_ranks import free_peers

from agent.native import CollectiveError, Communicator

SECRET = "a1" * 32
HELLO_MAGIC = 0x4C4F4341
CHALLENGE_MAGIC = 0x48434341
PROTOCOL_2_HELLO = struct.Struct("=6I2Q")  # magic, version, ranks, size, -, group, cluster
PROTOCOL_2_REPLY = struct.Struct("=6IQ")  # magic, version, status, rank, size, -, cluster
PROTOCOL_3_CHALLENGE = struct.Struct("=4IQ16s")
PROTOCOL_3_HELLO_BYTES = 88
PROTOCOL_3_REPLY = struct.Struct("=6IQ32s")
HELLO_4_BYTES = 88
VERSION_MISMATCH = 2


def _read(sock: socket.socket, n: int, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionError):
        pass
    return data


def _connect(address: str, timeout_s: float) -> socket.socket:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return socket.create_connection((host, int(port)), timeout=1)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _form_rank(rank: int, peers: list[str], timeout_s: float) -> tuple[str, float]:
    """Forms `rank` of this build; returns its error and how long it took."""
    started = time.monotonic()
    with pytest.raises(CollectiveError) as error:
        Communicator(rank, peers, timeout_s=timeout_s, fabric_secret=SECRET)
    return str(error.value), time.monotonic() - started


def _old_acceptor(peers: list[str], speak: str, seen: list[bytes]) -> threading.Thread:
    """Rank 1 of an older build, at rank 1's address."""
    host, port = peers[1].rsplit(":", 1)
    listener = socket.create_server((host, int(port)))

    def serve() -> None:
        listener.settimeout(20)
        conn, _ = listener.accept()
        if speak == "protocol 2":
            hello = _read(conn, PROTOCOL_2_HELLO.size, 5.0)
            seen.append(hello)
            version = struct.unpack_from("=I", hello, 4)[0]
            status = 0 if version == 2 else VERSION_MISMATCH
            conn.sendall(PROTOCOL_2_REPLY.pack(HELLO_MAGIC, 2, status, 1, 2, 0, 0))
        else:  # protocol 3: the challenge first, then a hello of 88 bytes
            conn.sendall(PROTOCOL_3_CHALLENGE.pack(CHALLENGE_MAGIC, 3, 1, 2, 0, bytes(16)))
            hello = _read(conn, PROTOCOL_3_HELLO_BYTES, 5.0)
            seen.append(hello)
            reply = PROTOCOL_3_REPLY.pack(HELLO_MAGIC, 3, VERSION_MISMATCH, 1, 2, 0, 0, bytes(32))
            conn.sendall(reply)
        time.sleep(0.5)
        conn.close()
        listener.close()

    thread = threading.Thread(target=serve)
    thread.start()
    return thread


@pytest.mark.parametrize(("speak", "version"), [("protocol 2", 2), ("protocol 3", 3)])
def test_a_rank_that_connects_to_an_older_build_is_told_to_upgrade_that_node(
    speak: str, version: int
) -> None:
    peers = free_peers(2)
    seen: list[bytes] = []
    old = _old_acceptor(peers, speak, seen)
    message, elapsed = _form_rank(0, peers, timeout_s=20)
    old.join()
    assert f"speaks fabric protocol {version}" in message, message
    assert "this rank speaks fabric protocol 4" in message, message
    assert "upgrade adaptrain on the node at 127.0.0.1" in message, message
    if version == 2:
        assert "before fabric authentication" in message, message
    assert elapsed < 10, (elapsed, message)  # at once, not after the 20 s timeout
    # The older build read a whole hello of ours, saw its version and refused it with
    # "different protocol version" (its own message) rather than waiting for more.
    assert len(seen[0]) == (PROTOCOL_2_HELLO.size if version == 2 else PROTOCOL_3_HELLO_BYTES)
    assert struct.unpack_from("=2I", seen[0]) == (HELLO_MAGIC, 4)


def _old_initiator(peers: list[str], speak: str, answers: list[bytes]) -> threading.Thread:
    """Rank 0 of an older (or newer) build, connecting to rank 1."""

    def run() -> None:
        sock = _connect(peers[1], 10)
        if speak == "protocol 2":
            sock.sendall(PROTOCOL_2_HELLO.pack(HELLO_MAGIC, 2, 0, 1, 2, 0, 0, 0))
            answers.append(_read(sock, 80, 3.0))
        elif speak == "protocol 5":
            sock.sendall(struct.pack("=2I", HELLO_MAGIC, 5) + bytes(120))
            answers.append(_read(sock, 80, 3.0))
        else:  # protocol 3 waits for a challenge that never comes
            answers.append(_read(sock, PROTOCOL_3_CHALLENGE.size, 5.0))
        sock.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_an_older_build_without_authentication_that_connects_is_refused_by_name() -> None:
    peers = free_peers(2)
    answers: list[bytes] = []
    old = _old_initiator(peers, "protocol 2", answers)
    message, _ = _form_rank(1, peers, timeout_s=4)
    old.join()
    assert "speaks fabric protocol 2 (an adaptrain build from before fabric authentication)" in (
        message
    ), message
    assert "upgrade adaptrain on the node at 127.0.0.1" in message, message
    # The old build gets a reply in its own format with its own version and the status
    # "version mismatch": it says "it runs a different protocol version".
    assert len(answers[0]) == PROTOCOL_2_REPLY.size, answers
    magic, version, status = PROTOCOL_2_REPLY.unpack(answers[0])[:3]
    assert (magic, version, status) == (HELLO_MAGIC, 2, VERSION_MISMATCH)


def test_a_protocol_3_build_that_connects_is_named_when_it_is_dropped() -> None:
    peers = free_peers(2)
    answers: list[bytes] = []
    old = _old_initiator(peers, "protocol 3", answers)
    message, _ = _form_rank(1, peers, timeout_s=4)
    old.join()
    assert "fabric protocol 3" in message and "upgrade adaptrain on its node" in message, message
    assert answers == [b""]  # dropped after the per-connection deadline, no challenge


def test_a_newer_build_that_connects_is_told_this_node_is_older() -> None:
    peers = free_peers(2)
    answers: list[bytes] = []
    newer = _old_initiator(peers, "protocol 5", answers)
    message, _ = _form_rank(1, peers, timeout_s=4)
    newer.join()
    assert "speaks fabric protocol 5 (a newer adaptrain build)" in message, message
    assert "upgrade adaptrain on this rank's node" in message, message
    magic, version, status = struct.unpack_from("=3I", answers[0])
    assert (magic, version, status) == (HELLO_MAGIC, 4, VERSION_MISMATCH)
