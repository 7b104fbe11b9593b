"""The worker's reconnectable channel to the agent (agent.runtime.channel): buffering while no
agent is connected, flushing in order on (re)connect, bounded metric buffering,
orphan detection; and the process identity checks a re-attaching agent relies on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.protocol.process import process_alive, process_start_time, unix_path
from agent.runtime.channel import AgentChannel


class FakeAgent:
    """A client end of the worker's socket, as the agent holds it. It acknowledges the
    numbered messages it reads (unless ``ack`` is off) and hands them over without their
    number; ``numbers`` keeps the numbers seen."""

    def __init__(self, path: str, *, ack: bool = True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with unix_path(path) as name:
            self.sock.connect(name)
        self.sock.settimeout(10)
        self.ack = ack
        self.numbers: list[int] = []
        self._pending = b""

    def read(self, n: int) -> list[dict]:
        messages = []
        while len(messages) < n:
            while b"\n" not in self._pending:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    raise EOFError(f"connection closed after {len(messages)} of {n} messages")
                self._pending += chunk
            line, self._pending = self._pending.split(b"\n", 1)
            message = json.loads(line)
            if "n" in message:
                number = message.pop("n")
                self.numbers.append(number)
                if self.ack:
                    self.write({"type": "ack", "n": number})
            messages.append(message)
        return messages

    def write(self, message: dict) -> None:
        self.sock.sendall((json.dumps(message) + "\n").encode())

    def close(self) -> None:
        self.sock.close()


def wait_until(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.fixture
def channel(tmp_path):
    received: list[dict] = []
    ch = AgentChannel(str(tmp_path / "w.sock"), on_message=received.append, grace_s=600)
    ch.received = received
    ch.start()
    yield ch
    ch.close()


def test_messages_sent_before_any_agent_connects_are_flushed_in_order(channel):
    for i in range(5):
        channel.send({"type": "metrics", "points": [{"name": "loss", "step": i, "value": 1.0}]})
        channel.send({"type": "applied", "id": 100 + i, "seq": i + 1, "step": i})
    agent = FakeAgent(channel.path)
    messages = agent.read(10)
    assert [(m["type"], m.get("seq")) for m in messages] == [
        (kind, i + 1 if kind == "applied" else None)
        for i in range(5)
        for kind in ("metrics", "applied")
    ]
    channel.send({"type": "standby", "address": "x"})  # live again once flushed
    assert agent.read(1) == [{"type": "standby", "address": "x"}]
    agent.close()


def test_beyond_the_limit_only_the_oldest_metrics_are_dropped_and_the_drop_is_counted(tmp_path):
    ch = AgentChannel(
        str(tmp_path / "w.sock"), on_message=lambda m: None, grace_s=600, max_buffered_metrics=5
    )
    ch.start()
    try:
        for i in range(20):
            ch.send({"type": "metrics", "points": [{"name": "loss", "step": i, "value": 0.0}]})
            if i % 4 == 0:
                ch.send({"type": "applied", "id": i, "seq": i, "step": i})
        ch.send({"type": "left", "version": 3, "step": 20})
        assert ch.dropped_metrics == 15
        agent = FakeAgent(ch.path)
        messages = agent.read(5 + 5 + 1 + 1)
        assert [m["points"][0]["step"] for m in messages if m["type"] == "metrics"] == [
            15,
            16,
            17,
            18,
            19,
        ]
        assert [m["seq"] for m in messages if m["type"] == "applied"] == [0, 4, 8, 12, 16]
        assert messages[-2]["type"] == "left"
        assert messages[-1] == {"type": "dropped", "metrics": 15}
        agent.close()
    finally:
        ch.close()


def test_a_new_agent_gets_what_was_sent_while_none_was_connected_and_replaces_the_old_one(channel):
    first = FakeAgent(channel.path)
    wait_until(lambda: channel.connected)
    channel.send({"type": "applied", "id": 1, "seq": 1, "step": 0})
    assert first.read(1)[0]["id"] == 1
    first.close()
    wait_until(lambda: not channel.connected)
    channel.send({"type": "applied", "id": 2, "seq": 2, "step": 5})
    channel.send(
        {"type": "rescaled", "version": 2, "rank": 0, "size": 1, "step": 5, "paused_s": 0.1}
    )
    second = FakeAgent(channel.path)
    assert [m["type"] for m in second.read(2)] == ["applied", "rescaled"]
    # Once the worker has read the second agent's acks (until then they would be sent
    # again: at least once), a third agent connecting takes over; the second's connection
    # is closed.
    assert channel.wait_flushed(10)
    third = FakeAgent(channel.path)
    wait_until(lambda: channel.connections == 3)
    with pytest.raises(EOFError):
        second.read(1)
    channel.send({"type": "left", "version": 3, "step": 9})
    assert third.read(1)[0]["type"] == "left"
    third.close()
    second.close()


def test_messages_the_agent_did_not_acknowledge_are_written_again_to_the_next_one(channel):
    """A message written into the socket of an agent that died before handling it is not
    lost — metrics included (an agent killed with -9 loses no point): the next agent gets
    it again (and skips numbers it has seen)."""
    first = FakeAgent(channel.path, ack=False)
    wait_until(lambda: channel.connected)
    channel.send({"type": "standby", "address": "a:1"})
    channel.send({"type": "metrics", "points": []})
    channel.send({"type": "applied", "id": 5, "seq": 1, "step": 3})
    assert [m["type"] for m in first.read(3)] == ["standby", "metrics", "applied"]
    first.write({"type": "ack", "n": first.numbers[0]})  # it handled only the first
    wait_until(lambda: len(channel._unacked) == 2)
    first.close()
    wait_until(lambda: not channel.connected)
    channel.send({"type": "left", "version": 2, "step": 4})
    second = FakeAgent(channel.path)
    assert [m["type"] for m in second.read(3)] == ["metrics", "applied", "left"]
    assert second.numbers == [first.numbers[1], first.numbers[2], first.numbers[2] + 1]
    assert channel.wait_flushed(5)
    second.close()


def test_an_agent_that_detaches_reads_everything_the_worker_wrote_up_to_its_last_line(channel):
    """A detaching agent loses no metric: the worker answers ``detach`` with ``detached``
    after everything it had written, then buffers for the next agent."""
    # (Its acknowledgements would cross the worker's letting go: a real agent writes them
    # into a closed connection, and skips the lines it handled when they come again.)
    first = FakeAgent(channel.path, ack=False)
    wait_until(lambda: channel.connected)
    for i in range(200):
        channel.send({"type": "metrics", "points": [{"name": "loss", "step": i, "value": 1.0}]})
    first.write({"type": "detach"})
    wait_until(lambda: not channel.connected)
    for i in range(200, 205):
        channel.send({"type": "metrics", "points": [{"name": "loss", "step": i, "value": 1.0}]})
    messages = first.read(201)
    assert [m["points"][0]["step"] for m in messages[:200]] == list(range(200))
    assert messages[200] == {"type": "detached"}
    with pytest.raises(EOFError):  # nothing after it on that connection
        first.read(1)
    assert channel.received == []  # the worker's code never sees the handshake
    second = FakeAgent(channel.path)
    # What the first did not acknowledge comes again, with the same numbers, then the rest.
    again = second.read(205)
    assert [m["points"][0]["step"] for m in again] == list(range(205))
    assert second.numbers[:200] == first.numbers[:200]
    first.close()
    second.close()


def test_lines_from_the_agent_reach_the_worker(channel):
    agent = FakeAgent(channel.path)
    agent.write(
        {"type": "command", "id": 7, "seq": 1, "action": "set_lr", "payload": {"value": 0.1}}
    )
    agent.sock.sendall(b'not json\n{"type": "cluster", "version": 2, "members": ["a:1"]}\n')
    wait_until(lambda: len(channel.received) == 2)
    assert [m["type"] for m in channel.received] == ["command", "cluster"]
    agent.close()


def test_wait_flushed_waits_for_an_agent_to_acknowledge_the_last_messages(channel):
    channel.send({"type": "exit", "code": 0})
    assert not channel.wait_flushed(0.2)
    result = {}
    waiter = threading.Thread(target=lambda: result.setdefault("ok", channel.wait_flushed(10)))
    waiter.start()
    agent = FakeAgent(channel.path)
    time.sleep(0.3)
    assert waiter.is_alive()  # written, but not acknowledged yet
    assert agent.read(1) == [{"type": "exit", "code": 0}]  # read and acknowledged
    waiter.join(10)
    assert result == {"ok": True}
    agent.close()


def test_a_worker_without_an_agent_for_the_grace_period_is_orphaned(tmp_path):
    calls = []
    ch = AgentChannel(
        str(tmp_path / "w.sock"),
        on_message=lambda m: None,
        grace_s=0.4,
        on_orphaned=lambda: calls.append(time.monotonic()),
    )
    started = time.monotonic()
    ch.start()
    try:
        agent = FakeAgent(ch.path)  # connected: the clock stops
        time.sleep(0.8)
        assert not ch.orphaned.is_set()
        agent.close()
        wait_until(lambda: ch.orphaned.is_set(), timeout_s=5)
        assert len(calls) == 1 and calls[0] - started >= 1.2
    finally:
        ch.close()


def test_socket_paths_longer_than_sockaddr_un_allows_still_work(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    received = []
    ch = AgentChannel(str(deep / "worker.sock"), on_message=received.append, grace_s=600)
    ch.start()
    try:
        assert len(ch.path) > 108
        agent = FakeAgent(ch.path)
        agent.write({"type": "cluster", "version": 1, "members": ["a:1"]})
        wait_until(lambda: received)
        agent.close()
    finally:
        ch.close()


def test_a_process_is_recognised_by_pid_and_start_time():
    me = process_start_time(os.getpid())
    assert me is not None and process_alive(os.getpid(), me)
    assert not process_alive(os.getpid(), me + 1)  # the pid was reused by another process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_start_time(child.pid) is None and not process_alive(child.pid, None)


ROOT = Path(__file__).resolve().parents[2]


def test_a_real_worker_takes_a_redelivered_command_once_answers_it_again_and_reports_its_exit(
    tmp_path,
):
    """agent.runtime.launcher + runtime.init over the socket: commands delivered twice (as after
    an agent restart) are applied once and answered again; what the worker said while no
    agent was connected arrives later; its exit status comes last."""
    path = str(tmp_path / "w.sock")
    env = {
        **os.environ,
        "ADAPTRAIN_JOB": "1",
        "ADAPTRAIN_RANK": "0",
        "ADAPTRAIN_PEERS": "127.0.0.1:1",
        "ADAPTRAIN_FIRST_SEQ": "0",
        "ADAPTRAIN_AGENT_SOCKET": path,
        "ADAPTRAIN_AGENT_GRACE_S": "60",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.runtime.launcher", "tests.support.channel_worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: os.path.exists(path), timeout_s=30)
        agent = FakeAgent(path)

        def replies(agent, n):
            found = []
            while len(found) < n:
                found += [m for m in agent.read(1) if m["type"] == "applied"]
            return found

        command = {
            "type": "command",
            "id": 11,
            "seq": 1,
            "action": "set_lr",
            "payload": {"value": 0.1},
        }
        agent.write(command)
        first = replies(agent, 1)[0]
        assert first["step"] == 1  # applied once
        agent.close()  # the agent dies
        time.sleep(0.3)  # the worker trains on, buffering metrics
        agent = FakeAgent(path)  # a new agent re-attaches and sends what it saw unanswered
        backlog = agent.read(5)
        assert all(m["type"] == "metrics" for m in backlog)
        agent.write(command)  # redelivered: answered again, not applied again
        agent.write(
            {"type": "command", "id": 12, "seq": 2, "action": "set_lr", "payload": {"value": 0.2}}
        )
        agent.write(
            {"type": "command", "id": 12, "seq": 2, "action": "set_lr", "payload": {"value": 0.2}}
        )
        again, second = replies(agent, 2)
        assert again == first
        assert second["id"] == 12 and second["step"] == 1
        agent.write({"type": "command", "id": 13, "seq": 3, "action": "stop", "payload": {}})
        messages = []
        while not messages or messages[-1]["type"] != "exit":
            messages += agent.read(1)
        stop_reply = [m for m in messages if m["type"] == "applied"]
        assert [m["id"] for m in stop_reply] == [13]  # id 12 was not answered a third time
        assert messages[-1] == {"type": "exit", "code": 0}
        assert proc.wait(timeout=30) == 0
        agent.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    assert "Traceback" not in out, out


def test_a_failing_worker_reports_its_exit_status_to_the_agent(tmp_path):
    path = str(tmp_path / "w.sock")
    env = {
        **os.environ,
        "ADAPTRAIN_JOB": "1",
        "ADAPTRAIN_RANK": "0",
        "ADAPTRAIN_PEERS": "127.0.0.1:1",
        "ADAPTRAIN_AGENT_SOCKET": path,
        "ADAPTRAIN_AGENT_GRACE_S": "60",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.runtime.launcher", "tests.support.channel_worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: os.path.exists(path), timeout_s=30)
        agent = FakeAgent(path)
        agent.write({"type": "command", "id": 1, "seq": 1, "action": "fail", "payload": {}})
        messages = []
        while not messages or messages[-1]["type"] != "exit":
            messages += agent.read(1)
        assert messages[-1] == {"type": "exit", "code": 1}
        assert proc.wait(timeout=30) == 1
        agent.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    assert "RuntimeError: failing as asked" in out


def test_a_worker_left_without_an_agent_stops_itself_after_the_grace_period(tmp_path):
    path = str(tmp_path / "w.sock")
    env = {
        **os.environ,
        "ADAPTRAIN_JOB": "1",
        "ADAPTRAIN_RANK": "0",
        "ADAPTRAIN_PEERS": "127.0.0.1:1",
        "ADAPTRAIN_AGENT_SOCKET": path,
        "ADAPTRAIN_AGENT_GRACE_S": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.runtime.launcher", "tests.support.channel_worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "no agent connected for 1 s" in out and "Traceback" not in out
    assert not os.path.exists(path)
