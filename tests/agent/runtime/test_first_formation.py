"""Forming the first communicator (agent.runtime.membership.Membership.form_first_communicator), in this
process, with the real native library: a newer cluster version announced while the
formation waits for a member that will never come interrupts it at once, and the worker
goes on in that version instead of waiting out the collective timeout."""

from __future__ import annotations

import json
import threading
import time

import pytest

from agent import protocol, runtime
from agent.local import free_port


def _session(members: list[str], me: int) -> runtime.Session:
    return runtime.Session(
        job=1,
        rank=me,
        size=len(members),
        peers=members,
        params={},
        first_seq=0,
        address=members[me],
        cluster_version=1,
    )


def _sent(capsys) -> list[dict]:
    return [
        json.loads(line[len(protocol.PREFIX) :])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(protocol.PREFIX)
    ]


@pytest.fixture(autouse=True)
def _long_collective_timeout(monkeypatch):
    monkeypatch.setenv("COLLECTIVE_TIMEOUT", "60")


def test_a_newer_version_interrupts_a_formation_waiting_for_a_dead_member(capsys):
    me, dead = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"  # nobody listens at dead
    session = _session([me, dead], 0)
    announce = threading.Timer(
        1.0,
        session._on_agent_message,
        args=({"type": "cluster", "version": 2, "members": [me]},),
    )
    announce.start()
    started = time.monotonic()
    session.membership.form_first_communicator(timeout_s=30)
    took = time.monotonic() - started
    announce.join()
    assert took < 20, (
        f"took {took:.1f} s: the formation was not interrupted (COLLECTIVE_TIMEOUT is 60 s)"
    )
    assert (session.cluster_version, session.rank, session.size, session.peers) == (2, 0, 1, [me])
    sent = _sent(capsys)
    assert [m["type"] for m in sent] == ["rescaled"]
    assert {k: sent[0][k] for k in ("version", "rank", "size", "step")} == {
        "version": 2,
        "rank": 0,
        "size": 1,
        "step": 0,
    }
    # Once formed, the signal is harmless: a later announcement does not interrupt anything.
    session._on_agent_message({"type": "cluster", "version": 3, "members": [me]})
    time.sleep(0.2)


def test_a_version_known_before_forming_is_formed_directly_and_one_that_leaves_this_worker_out_ends_it(
    capsys,
):
    me, other = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    session = _session([me, other], 0)
    session._on_agent_message({"type": "cluster", "version": 2, "members": [other]})
    with pytest.raises(SystemExit) as ended:
        session.membership.form_first_communicator(timeout_s=5)
    assert ended.value.code == 0 and session.left
    assert [(m["type"], m["version"]) for m in _sent(capsys)] == [("left", 2)]


def test_without_a_newer_version_a_failed_formation_says_what_it_waited_for(monkeypatch):
    monkeypatch.setenv("COLLECTIVE_TIMEOUT", "1")
    me, dead = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    session = _session([me, dead], 0)
    with pytest.raises(
        RuntimeError, match="could not form cluster version 1 .* no newer version came within 1 s"
    ):
        session.membership.form_first_communicator(timeout_s=1)
