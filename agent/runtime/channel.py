"""The worker's end of its reconnectable channel to the agent: a Unix-domain socket.

The agent gives each worker a socket path (``ADAPTRAIN_AGENT_SOCKET``); the worker
listens there and accepts one agent connection at a time. Both sides exchange JSON
lines (the frames of :mod:`agent.protocol`, described in ``docs/protocols.md``). The
agent may go away and a new one (a restarted agent) connect later: while no agent is
connected the worker keeps training and buffers what it would have sent, then flushes
the buffer in order to the next agent that connects. Command replies, membership
messages and everything else that is not a metric are never dropped; metric messages
beyond ``MAX_BUFFERED_METRICS`` are dropped oldest first and counted (the next agent is
told how many).

Every message, metrics included, carries a number and stays with the worker after it
was written until the agent acknowledges it (an acknowledgement covers everything up to
its number): a message written into the socket of an agent that died before reading it
— killed with ``-9`` — is written again to the next agent, which skips numbers it has
handled (the agent acknowledges a metrics message once its points are in its on-disk
spool, :mod:`agent.daemon.metrics`). An agent that exits on purpose lets go: it asks to
detach; the worker answers with a last line on that connection (everything it wrote
before is ahead of it) and buffers from then on, so the agent reads up to that line,
handles what it read and only then closes. Only metrics beyond the buffer's bound are
ever dropped, and the next agent is told how many.

A worker with no agent for longer than ``ADAPTRAIN_AGENT_GRACE_S`` seconds is an
orphan: :attr:`AgentChannel.orphaned` is set and the ``on_orphaned`` callback runs (the
runtime stops the worker), so workers whose agent never comes back do not run forever.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

from agent.protocol.process import unix_path

MAX_BUFFERED_METRICS = 20_000
SEND_TIMEOUT_S = 60.0  # an agent that reads nothing for this long is treated as gone

_active: AgentChannel | None = None


def active() -> AgentChannel | None:
    """The channel this process opened, if any (the launcher reports the exit status on it)."""
    return _active


class AgentChannel:
    """Listen on ``path`` for the agent; send messages to it, buffering while it is away.

    ``on_message`` runs on a reader thread for every JSON object the agent sends.
    """

    def __init__(
        self,
        path: str,
        *,
        on_message: Callable[[dict], None],
        grace_s: float,
        on_orphaned: Callable[[], None] | None = None,
        max_buffered_metrics: int = MAX_BUFFERED_METRICS,
    ):
        self.path = path
        self.on_message = on_message
        self.on_orphaned = on_orphaned
        self.grace_s = grace_s
        self.max_buffered_metrics = max_buffered_metrics
        self.dropped_metrics = 0  # metric messages dropped while no agent was connected
        self.connections = 0  # agent connections accepted so far
        self.orphaned = threading.Event()
        # (n, line, is a metrics message): written once an agent is connected
        self._buffer: collections.deque[tuple[int, bytes, bool]] = collections.deque()
        self._unacked: collections.deque[tuple[int, bytes]] = (
            collections.deque()
        )  # written, not acked
        self._last_n = 0
        self._buffered_metrics = 0
        self._unreported_drops = 0
        self._conn: socket.socket | None = None
        self._lock = threading.Lock()  # guards the connection and the buffer; held while sending
        self._flushed = threading.Condition(self._lock)
        self._agent_since = time.monotonic()  # when the current connection (or its absence) began
        self._listener: socket.socket | None = None
        self._closed = False

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        global _active
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with unix_path(self.path) as name:
            listener.bind(name)
        os.chmod(self.path, 0o600)
        listener.listen(4)
        self._listener = listener
        _active = self
        threading.Thread(
            target=self._accept_loop, name="adaptrain-agent-accept", daemon=True
        ).start()
        threading.Thread(
            target=self._watchdog, name="adaptrain-agent-watchdog", daemon=True
        ).start()

    def close(self) -> None:
        """Stop listening and drop the connection (what is still buffered is lost)."""
        self._closed = True
        with self._lock:
            conn, self._conn = self._conn, None
        for s in (conn, self._listener):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._conn is not None

    # -- sending ----------------------------------------------------------------------
    def send(self, message: dict) -> None:
        with self._lock:
            self._last_n += 1
            n = self._last_n
            message = {**message, "n": n}
            line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
            self._append(n, line, message.get("type") == "metrics")
            if self._conn is not None:
                self._flush()

    def _append(self, n: int, line: bytes, metrics: bool) -> None:
        """Buffer a line (lock held); beyond the limit drop the oldest metric message."""
        self._buffer.append((n, line, metrics))
        if metrics:
            self._buffered_metrics += 1
            if self._buffered_metrics > self.max_buffered_metrics:
                for i, (_, _, is_metrics) in enumerate(self._buffer):
                    if is_metrics:
                        del self._buffer[i]
                        break
                self._buffered_metrics -= 1
                self.dropped_metrics += 1
                self._unreported_drops += 1

    def _sendall(self, line: bytes) -> bool:
        """Write to the connection (lock held); on failure forget the connection."""
        try:
            self._conn.sendall(line)
            return True
        except OSError:
            self._drop_connection(self._conn)
            return False

    def _acked(self, n: int) -> None:
        with self._lock:
            while self._unacked and self._unacked[0][0] <= n:
                self._unacked.popleft()
            self._flushed.notify_all()

    def _drop_connection(self, conn: socket.socket) -> None:
        """(lock held) The agent went away: buffer from now on."""
        if self._conn is conn:
            self._conn = None
            self._agent_since = time.monotonic()
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)

    def _flush(self) -> None:
        """(lock held) Send the buffer in order to the connected agent."""
        if self._unreported_drops:
            self._last_n += 1
            self._buffer.append(
                (
                    self._last_n,
                    (
                        json.dumps(
                            {
                                "type": "dropped",
                                "metrics": self._unreported_drops,
                                "n": self._last_n,
                            }
                        )
                        + "\n"
                    ).encode(),
                    False,
                )
            )
            self._unreported_drops = 0
        while self._buffer and self._conn is not None:
            n, line, metrics = self._buffer[0]
            if not self._sendall(line):
                return
            self._buffer.popleft()
            self._unacked.append((n, line))
            if metrics:
                self._buffered_metrics -= 1
        self._flushed.notify_all()

    def wait_flushed(self, timeout_s: float) -> bool:
        """Block until an agent is connected and has acknowledged everything, or the
        timeout passed, or the worker was orphaned. True when flushed."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._conn is None or self._buffer or self._unacked:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.orphaned.is_set() or self._closed:
                    return False
                self._flushed.wait(min(remaining, 0.5))
            return True

    # -- the agent's side -------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                time.sleep(0.1)
                continue
            # Only sends time out (an agent that stopped reading); reads wait for commands.
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(SEND_TIMEOUT_S), 0)
            )
            with self._lock:
                if self._conn is not None:  # a new agent replaces the one we had
                    old = self._conn
                    self._conn = None
                    with contextlib.suppress(OSError):
                        old.shutdown(socket.SHUT_RDWR)
                self._conn = conn
                self._agent_since = time.monotonic()
                self.connections += 1
                # What the previous agent may not have read comes first, in order.
                for _, line in list(self._unacked):
                    if not self._sendall(line):
                        break
                else:
                    self._flush()
            threading.Thread(
                target=self._read, args=(conn,), name="adaptrain-agent-reader", daemon=True
            ).start()

    def _read(self, conn: socket.socket) -> None:
        pending = b""
        try:
            while True:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    if not raw.strip():
                        continue
                    try:
                        message = json.loads(raw)
                    except ValueError:
                        print(
                            f"ignoring malformed line from the agent: {raw[:200]!r}",
                            file=sys.stderr,
                        )
                        continue
                    if not isinstance(message, dict):
                        continue
                    if message.get("type") == "ack":
                        if isinstance(message.get("n"), int):
                            self._acked(message["n"])
                    elif message.get("type") == "detach":
                        self._let_go(conn)
                        return
                    else:
                        self.on_message(message)
        except OSError:
            pass
        finally:
            with self._lock:
                self._drop_connection(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _let_go(self, conn: socket.socket) -> None:
        """The agent is exiting on purpose: write the last line it will read from us and
        buffer from now on (sends hold the lock, so nothing follows that line)."""
        with self._lock:
            if self._conn is conn:
                with contextlib.suppress(OSError):
                    conn.sendall(b'{"type":"detached"}\n')
                self._drop_connection(conn)

    def _watchdog(self) -> None:
        while not self._closed:
            time.sleep(min(1.0, self.grace_s / 4))
            with self._lock:
                gone_for = time.monotonic() - self._agent_since if self._conn is None else 0.0
            if gone_for > self.grace_s and not self.orphaned.is_set():
                self.orphaned.set()
                with self._lock:
                    self._flushed.notify_all()
                if self.on_orphaned is not None:
                    self.on_orphaned()
                return
