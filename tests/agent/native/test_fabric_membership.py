"""The fabric's attacks of issue 18, over real sockets against real ranks: a stranger
that knows everything about a run but its fabric secret (the peer list, the cluster
version, the wire format) tries to join a forming group, replays a member's recorded
handshake, or asks a worker's blob service for the model. Each is refused, and the
real ranks still form in normal time, allreduce correctly and serve their blobs.

The strangers here speak the library's handshake (fabric protocol 4: a hello with the
initiator's nonce, a reply with the acceptor's nonce and proof, a confirm with the
initiator's proof; transport_tcp.h). On the library before the handshake proved
membership every test here failed (the stranger became rank 0 of the group and the real
rank 0 was refused; the blob service sent the weights). A positive control checks that
this file computes the proof as the library does, so that the refusals are about the
secret and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import threading
import time

import numpy as np
import pytest
from native_ranks import SPAWN, free_peers, own_listening_ports, run_ranks

from agent.native import CollectiveError, Communicator

SECRET = "a1" * 32  # a run's secret: 64 hex digits, as the control plane makes them
OTHER_SECRET = "b2" * 32  # another job's, or another run's
VERSION = 3  # the cluster version the group forms at
TIMEOUT_S = 15.0
NORMAL_FORMATION_S = 5.0  # a group of two forms in well under this on a busy box

HELLO_MAGIC = 0x4C4F4341
CONFIRM_MAGIC = 0x46434341
PROTOCOL = 4
HELLO = struct.Struct("=6I2Q16s32s")  # ..., group id, cluster version, nonce, padding
REPLY = struct.Struct("=6IQ16s32s")  # ..., status, ..., cluster version, nonce, proof
CONFIRM = struct.Struct("=2I32s")  # magic, version, proof
ACCEPTED, NOT_A_MEMBER = 0, 8

BLOB_CHALLENGE = struct.Struct("=4I2Q16s")
BLOB_PROOF = struct.Struct("=4I16s32s")
BLOB_CHALLENGE_MAGIC, BLOB_PROOF_MAGIC = 0x48434C42, 0x46504C42
BLOB_REQUEST = struct.Struct("<IIQQIIQII")  # blob_protocol.h's 48-byte request header
BLOB_REQUEST_MAGIC = 0x51524C42
FLOAT32 = 1  # core/types.h DataType


def group_id(peers: list[str]) -> int:
    """transport_tcp's hash_peers: FNV-1a over the peer list."""
    value = 1469598103934665603
    for byte in "".join(peer + "\n" for peer in peers).encode():
        value = ((value ^ byte) * 1099511628211) % 2**64
    return value


def proof(
    secret: str,
    role: str,
    channel: str,
    acceptor_nonce: bytes,
    initiator_nonce: bytes,
    group: int,
    initiator: int,
    acceptor: int,
    size: int,
    cluster_version: int = VERSION,
) -> bytes:
    """auth/fabric_auth.cc's handshake_proof."""
    label = f"adaptrain-fabric/1/{channel}/{role}".encode()
    message = (
        struct.pack("<Q", len(label))
        + label
        + acceptor_nonce
        + initiator_nonce
        + struct.pack("<5Q", group, cluster_version, initiator, acceptor, size)
    )
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def _connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            return socket.create_connection((host, int(port)), timeout=1)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _read(sock: socket.socket, n: int, timeout_s: float) -> bytes:
    """Up to n bytes: fewer when the peer hangs up or nothing more comes in time."""
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


def claim_rank_0(peers: list[str], secret: str, replay: tuple[bytes, bytes] | None = None) -> dict:
    """Connect to rank 1 of `peers` as rank 0 would, knowing `secret` (perhaps the
    wrong one), or send `replay` (a recorded hello and confirm). Returns rank 1's
    reply status, its verdict after the confirm (NOT_A_MEMBER, or None when it said
    nothing: admitted) and the nonces."""
    sock = _connect(peers[1])
    group = group_id(peers)
    own_nonce = os.urandom(16)
    hello = HELLO.pack(HELLO_MAGIC, PROTOCOL, 0, 1, 2, 0, group, VERSION, own_nonce, bytes(32))
    sock.sendall(replay[0] if replay is not None else hello)
    reply = _read(sock, REPLY.size, 5.0)
    status = struct.unpack_from("=I", reply, 8)[0] if len(reply) >= 12 else None
    acceptor_nonce = REPLY.unpack(reply)[7] if len(reply) == REPLY.size else b""
    verdict = None
    if status == ACCEPTED:
        if replay is not None:
            confirm = replay[1]
        else:
            mac = proof(
                secret, "initiator", "collective", acceptor_nonce, own_nonce, group, 0, 1, 2
            )
            confirm = CONFIRM.pack(CONFIRM_MAGIC, PROTOCOL, mac)
        sock.sendall(confirm)
        answer = _read(sock, REPLY.size, 2.0)
        if len(answer) == REPLY.size and REPLY.unpack(answer)[0] == HELLO_MAGIC:
            verdict = REPLY.unpack(answer)[2]
    sock.close()
    return {
        "status": status,
        "verdict": verdict,
        "reply": reply,
        "acceptor_nonce": acceptor_nonce,
        "own_nonce": own_nonce,
    }


def _form_and_allreduce(rank: int, peers: list[str]) -> tuple[float, list[float]]:
    started = time.monotonic()
    comm = Communicator(
        rank, peers, timeout_s=TIMEOUT_S, cluster_version=VERSION, fabric_secret=SECRET
    )
    formed = time.monotonic() - started
    x = np.full(1000, rank + 1.0)
    comm.allreduce(x, op="sum")
    comm.close()
    return formed, sorted(set(x.tolist()))


def _stranger_first(rank: int, peers: list[str], replay: bytes | None) -> dict:
    """Rank 0's process lets a stranger claim rank 0 at rank 1 first, then forms."""
    attempt = claim_rank_0(peers, OTHER_SECRET, replay) if rank == 0 else None
    formed, values = _form_and_allreduce(rank, peers)
    return {"stranger": attempt, "formed": formed, "values": values}


def _check_group_formed_without_the_stranger(results: dict) -> None:
    for rank in (0, 1):
        assert results[rank]["values"] == [3.0], results[rank]  # 1 + 2, nothing injected
        assert results[rank]["formed"] < NORMAL_FORMATION_S, results[rank]


def test_a_stranger_with_a_valid_looking_handshake_but_not_the_secret_is_refused() -> None:
    results = run_ranks(_stranger_first, 2, None, timeout_s=TIMEOUT_S + 30)
    stranger = results[0]["stranger"]
    # Its hello's public fields match, so rank 1 answers; its confirm does not prove
    # membership, so rank 1 refuses it and hangs up.
    assert stranger["status"] == ACCEPTED, stranger
    assert stranger["verdict"] == NOT_A_MEMBER, stranger
    _check_group_formed_without_the_stranger(results)


def test_a_replayed_handshake_of_a_real_member_is_refused() -> None:
    peers = free_peers(2)
    # Record a whole handshake of a real rank 0 of this run (its hello and its
    # confirm) by standing at rank 1's address and answering as rank 1 would, with
    # the run's secret: what an eavesdropper on a real formation would have seen.
    host, port = peers[1].rsplit(":", 1)
    listener = socket.create_server((host, int(port)))
    recorded: list[bytes] = []

    def record() -> None:
        listener.settimeout(TIMEOUT_S)
        conn, _ = listener.accept()
        hello = _read(conn, HELLO.size, 2.0)
        initiator_nonce = HELLO.unpack(hello)[8]
        nonce = os.urandom(16)
        mac = proof(
            SECRET, "acceptor", "collective", nonce, initiator_nonce, group_id(peers), 0, 1, 2
        )
        conn.sendall(REPLY.pack(HELLO_MAGIC, PROTOCOL, ACCEPTED, 1, 2, 0, VERSION, nonce, mac))
        recorded.extend([hello, _read(conn, CONFIRM.size, 2.0)])
        conn.close()

    recorder = threading.Thread(target=record)
    recorder.start()
    with pytest.raises(CollectiveError):
        Communicator(0, peers, timeout_s=3, cluster_version=VERSION, fabric_secret=SECRET)
    recorder.join()
    listener.close()
    assert [len(m) for m in recorded] == [HELLO.size, CONFIRM.size], recorded  # a whole one

    replay = (recorded[0], recorded[1])
    results = run_ranks(_stranger_first, 2, replay, timeout_s=TIMEOUT_S + 30, peers=peers)
    stranger = results[0]["stranger"]
    # The replayed confirm proves membership for the recorded exchange's nonce, not
    # for the one rank 1 chose this time.
    assert stranger["status"] == ACCEPTED, stranger
    assert stranger["verdict"] == NOT_A_MEMBER, stranger
    _check_group_formed_without_the_stranger(results)


def _member_without_the_group(rank: int, peers: list[str]) -> dict | None:
    """Rank 0 is this file's own code holding the right secret; rank 1 is real."""
    if rank == 0:
        attempt = claim_rank_0(peers, SECRET)
        expected = proof(
            SECRET,
            "acceptor",
            "collective",
            attempt["acceptor_nonce"],
            attempt["own_nonce"],
            group_id(peers),
            0,
            1,
            2,
        )
        attempt["acceptor_proved"] = attempt["reply"][48:80] == expected
        return attempt
    try:
        Communicator(1, peers, timeout_s=3, cluster_version=VERSION, fabric_secret=SECRET)
    except CollectiveError:
        pass  # its "rank 0" hangs up after the handshake: the group cannot form
    return None


def test_the_proof_here_is_the_librarys_so_the_refusals_are_about_the_secret() -> None:
    results = run_ranks(_member_without_the_group, 2, timeout_s=TIMEOUT_S + 30)
    attempt = results[0]
    assert attempt["status"] == ACCEPTED, attempt
    # Rank 1 proved its own membership, over both nonces, and took this file's
    # confirm (no refusal followed it).
    assert attempt["acceptor_proved"], attempt
    assert attempt["verdict"] is None, attempt


def _impostor_then_group(rank: int, peers: list[str], impostor: dict, ready: object) -> dict:
    """Rank 2 is not in the group (peers[:2]): it is a real library process that claims
    rank 0 with another secret or another cluster version; the real rank 0 starts
    after it has been turned away."""
    group = peers[:2]
    if rank == 2:
        started = time.monotonic()
        try:
            Communicator(0, group, timeout_s=3, **impostor)
            outcome = "joined"
        except CollectiveError as error:
            outcome = str(error)
        ready.set()  # type: ignore[attr-defined]
        return {"outcome": outcome, "elapsed": time.monotonic() - started}
    if rank == 0:
        ready.wait(TIMEOUT_S)  # type: ignore[attr-defined]
    started = time.monotonic()
    comm = Communicator(
        rank, group, timeout_s=TIMEOUT_S, cluster_version=VERSION, fabric_secret=SECRET
    )
    formed = time.monotonic() - started
    x = np.full(10, rank + 1.0)
    comm.allreduce(x, op="sum")
    comm.close()
    return {"formed": formed, "values": sorted(set(x.tolist()))}


@pytest.mark.parametrize(
    ("impostor", "reason"),
    [
        ({"cluster_version": VERSION, "fabric_secret": OTHER_SECRET}, "different fabric secrets"),
        ({"cluster_version": VERSION + 1, "fabric_secret": SECRET}, "another cluster version"),
    ],
    ids=["another-job-or-run", "another-cluster-version"],
)
def test_a_peer_of_another_job_or_version_is_refused_and_the_group_forms(
    impostor: dict, reason: str
) -> None:
    ready = SPAWN.Event()
    results = run_ranks(_impostor_then_group, 3, impostor, ready, timeout_s=TIMEOUT_S + 30)
    assert reason in results[2]["outcome"], results[2]
    for rank in (0, 1):
        assert results[rank]["values"] == [3.0], results[rank]


def _blob_thief(rank: int, peers: list[str]) -> dict | None:
    comm = Communicator(
        rank, peers, timeout_s=TIMEOUT_S, cluster_version=VERSION, fabric_secret=SECRET
    )
    weights = (np.arange(4096, dtype=np.float32) * 0.5 + 1.0).astype(np.float32)
    port = np.zeros(1, dtype=np.int64)
    if rank == 0:
        comm.publish("model", weights)
        (port[0],) = own_listening_ports()
    comm.broadcast(port, root=0)
    result = None
    if rank == 1:
        address = f"{peers[0].rsplit(':', 1)[0]}:{int(port[0])}"
        group = group_id(peers)
        stolen = []
        for with_fake_proof in (False, True):
            sock = _connect(address)
            challenge = _read(sock, BLOB_CHALLENGE.size, 0.5)
            challenged = len(challenge) == BLOB_CHALLENGE.size
            if with_fake_proof and challenged:
                owner_nonce = BLOB_CHALLENGE.unpack(challenge)[6]
                nonce = os.urandom(16)
                mac = proof(OTHER_SECRET, "initiator", "blob", owner_nonce, nonce, group, 1, 0, 2)
                sock.sendall(BLOB_PROOF.pack(BLOB_PROOF_MAGIC, 2, 1, 0, nonce, mac))
            wire_version = 2 if challenged else 1
            request = BLOB_REQUEST.pack(
                BLOB_REQUEST_MAGIC, wire_version, group, VERSION, 1, FLOAT32, weights.size, 5, 0
            )
            try:
                sock.sendall(request + b"model")
            except OSError:
                pass  # already hung up on
            stolen.append(_read(sock, 48 + weights.nbytes, 5.0))
            sock.close()
        # The real member is served as before.
        out = np.zeros_like(weights)
        comm.request(0, "model", out, timeout_s=5)
        result = {
            "stolen_bytes": [len(data) for data in stolen],
            "leaked": [weights.tobytes()[:64] in data for data in stolen],
            "served": bool(np.array_equal(out, weights)),
        }
    comm.barrier()
    comm.close()
    return result


def test_a_stranger_asking_the_blob_service_for_the_model_gets_nothing() -> None:
    results = run_ranks(_blob_thief, 2, timeout_s=TIMEOUT_S + 40)
    result = results[1]
    assert result["leaked"] == [False, False], result
    # Nothing beyond the challenge and, for the fake proof, the refusal.
    assert all(n <= 48 for n in result["stolen_bytes"]), result
    assert result["served"], result
