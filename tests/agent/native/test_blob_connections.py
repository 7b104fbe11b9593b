"""How many connections a worker's blob service holds, over real sockets: more than the
1024 it used to cap them at. The cap counted every connection, so 1024 strangers that
had merely connected (each held for its 2 s handshake deadline) kept a real peer out:
its connection was accepted and closed at once and its request failed; and no more than
1024 members could stay connected. Now members are not capped (the process's
descriptor limit is the bound), and a flood of strangers beyond 1024 makes room by
dropping the oldest stranger, never a member or a newcomer.
"""

from __future__ import annotations

import os
import resource
import socket
import struct

import numpy as np
import pytest
from native_ranks import own_listening_ports, run_ranks
from test_fabric_membership import (
    BLOB_CHALLENGE,
    BLOB_PROOF,
    BLOB_PROOF_MAGIC,
    BLOB_REQUEST,
    BLOB_REQUEST_MAGIC,
    FLOAT32,
    SECRET,
    TIMEOUT_S,
    VERSION,
    _read,
    group_id,
    proof,
)

from agent.native import Communicator

OLD_CAP = 1024
CONNECTIONS = OLD_CAP + 200
BLOB_WELCOME = struct.Struct("=2I32s")
WEIGHTS = np.arange(256, dtype=np.float32)

pytestmark = pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 2 * CONNECTIONS + 200,
    reason="the hard limit on open files is too low to open this many connections",
)


def _raise_descriptor_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * CONNECTIONS + 200), hard))


def _open_many(rank: int, peers: list[str], prove: bool) -> dict | None:
    _raise_descriptor_limit()
    comm = Communicator(
        rank, peers, timeout_s=TIMEOUT_S, cluster_version=VERSION, fabric_secret=SECRET
    )
    port = np.zeros(1, dtype=np.int64)
    if rank == 0:
        comm.publish("model", WEIGHTS)
        (port[0],) = own_listening_ports()
    comm.broadcast(port, root=0)
    result = None
    if rank == 1:
        address = (peers[0].rsplit(":", 1)[0], int(port[0]))
        group = group_id(peers)
        sockets = []
        welcomed = 0
        for _ in range(CONNECTIONS):
            sock = socket.create_connection(address, timeout=10)
            sockets.append(sock)
            if prove:  # as rank 1 would, with the run's secret
                challenge = _read(sock, BLOB_CHALLENGE.size, 5.0)
                owner_nonce = BLOB_CHALLENGE.unpack(challenge)[6]
                nonce = os.urandom(16)
                mac = proof(SECRET, "initiator", "blob", owner_nonce, nonce, group, 1, 0, 2)
                sock.sendall(BLOB_PROOF.pack(BLOB_PROOF_MAGIC, 2, 1, 0, nonce, mac))
                welcome = _read(sock, BLOB_WELCOME.size, 5.0)
                welcomed += len(welcome) == BLOB_WELCOME.size and welcome[4:8] == bytes(4)
        served = []
        if prove:
            # The first and the last of them still get the model.
            for sock in (sockets[0], sockets[-1]):
                request = BLOB_REQUEST.pack(
                    BLOB_REQUEST_MAGIC, 2, group, VERSION, 1, FLOAT32, WEIGHTS.size, 5, 0
                )
                sock.sendall(request + b"model")
                reply = _read(sock, 48 + WEIGHTS.nbytes, 5.0)
                served.append(reply[48:] == WEIGHTS.tobytes())
        # A real member's request, with all of them still open.
        out = np.zeros_like(WEIGHTS)
        comm.request(0, "model", out, timeout_s=5)
        result = {
            "welcomed": welcomed,
            "served": served,
            "member_served": bool(np.array_equal(out, WEIGHTS)),
        }
        for sock in sockets:
            sock.close()
    comm.barrier()
    comm.close()
    return result


def test_more_members_than_the_old_cap_stay_connected_and_are_served() -> None:
    result = run_ranks(_open_many, 2, True, timeout_s=TIMEOUT_S + 90)[1]
    assert result["welcomed"] == CONNECTIONS, result
    assert result["served"] == [True, True], result
    assert result["member_served"], result


def test_a_flood_of_strangers_beyond_the_old_cap_does_not_keep_a_peer_out() -> None:
    result = run_ranks(_open_many, 2, False, timeout_s=TIMEOUT_S + 90)[1]
    assert result["member_served"], result
