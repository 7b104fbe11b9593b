"""The agent's end of one worker's channel: connect to the worker's Unix socket (again
whenever the connection drops while the worker lives), send it first what it may have
missed, then read its lines, hand each to the job's group once, and acknowledge the
numbered ones (docs/protocols.md, "Agent ⇄ worker").

A numbered line is acknowledged only after its effect is on disk (the job's state, the
report outbox, the metric spool), so a line the worker wrote to an agent that died before handling it is
written again to the next agent, which skips the numbers it has handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Iterable
from typing import Protocol

from agent.daemon.processes import LocalWorker
from agent.protocol import ProtocolError
from agent.protocol.process import unix_path
from agent.protocol.worker import (
    AckLine,
    DetachedLine,
    DetachLine,
    FromWorker,
    encode,
    line_number,
)
from agent.protocol.worker import parse_from_worker as parse

log = logging.getLogger(__name__)

READ_LIMIT = 1 << 22  # bytes in one line: a metrics line of a big batch of points


class Group(Protocol):
    """What a connection needs from the group of workers it belongs to."""

    job_id: int

    @property
    def detaching(self) -> bool: ...

    def hello_lines(self, worker: LocalWorker) -> list[bytes]: ...

    async def handle(self, worker: LocalWorker, line: FromWorker, n: int | None = None) -> None: ...

    def save(self) -> None: ...


async def connect(
    worker: LocalWorker,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """Connect to the worker's socket, retrying while it starts up; None once it is gone."""
    delay = 0.02
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with unix_path(worker.socket_path) as name:
                sock.connect(name)
            return await asyncio.open_unix_connection(sock=sock, limit=READ_LIMIT)
        except OSError:
            sock.close()
        if worker.gone():
            return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def serve(worker: LocalWorker, group: Group) -> None:
    """Keep a connection to the worker while it lives (and the group is not letting go):
    on every (re)connection first send what it may have missed, then read its lines."""
    while worker.alive and not group.detaching:
        connected = await connect(worker)
        if connected is None:
            return
        reader, writer = connected
        for line in group.hello_lines(worker):
            writer.write(line)
        worker.writer = writer
        try:
            await writer.drain()
            if await _read(worker, group, reader, writer):
                return  # the worker's last line to this agent (see WorkerGroup.detach)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            worker.writer = None
            writer.close()
        if worker.gone() or group.detaching:
            return
        await asyncio.sleep(0.1)


async def _read(
    worker: LocalWorker,
    group: Group,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> bool:
    """Handle the worker's lines until the connection ends; True when it let go (detached)."""
    while True:
        raw = await reader.readline()
        if not raw or not raw.endswith(b"\n"):
            return False  # closed, or cut off: the worker sends it again to the next connection
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            log.warning("job %s worker %s: malformed protocol line", group.job_id, worker.rank)
            continue
        if not isinstance(data, dict):
            continue
        line: FromWorker | None
        try:
            n = line_number(data)
            line = parse(data)
        except ProtocolError as exc:
            log.warning("job %s worker %s: %s", group.job_id, worker.rank, exc)
            n, line = _number_or_none(data), None
        if isinstance(line, DetachedLine):
            return True
        if n is not None and n <= worker.acked_n:
            continue  # written again after a reconnection; handled before
        if line is not None:
            await group.handle(worker, line, n)
        if n is not None:
            # Its effect is on disk (state, outbox) before the worker lets go of it.
            worker.acked_n = n
            group.save()
            writer.write(encode(AckLine(n=n)))


def _number_or_none(data: dict[str, object]) -> int | None:
    """The number of a line that is not a valid frame (it is acknowledged all the same, so
    that the worker does not send it again forever)."""
    try:
        return line_number(data)
    except ProtocolError:
        return None


async def let_go(serving: list[tuple[LocalWorker, asyncio.Task[None]]], timeout_s: float) -> int:
    """The agent exits on purpose: ask each connected worker to let go and read its
    connection (its :func:`serve` task) up to its last line, ``detached``, so that what it
    had written — metrics included — is handled, not lost; then close every connection.
    Returns how many did not let go within ``timeout_s``."""
    letting_go = []
    for worker, task in serving:
        if worker.writer is not None and not task.done():
            with contextlib.suppress(OSError, RuntimeError):
                worker.writer.write(encode(DetachLine()))
            letting_go.append(task)
    late: set[asyncio.Task[None]] = set()
    if letting_go:
        _, late = await asyncio.wait(letting_go, timeout=timeout_s)
    for _, task in serving:
        task.cancel()
    await asyncio.gather(*(task for _, task in serving), return_exceptions=True)
    for worker, _ in serving:
        if worker.writer is not None:
            worker.writer.close()
            worker.writer = None
    return len(late)


async def send(workers: Iterable[LocalWorker], line: bytes) -> None:
    """Write ``line`` to those of ``workers`` connected now (one connecting later is sent
    what it missed by its group's hello lines)."""
    for worker in workers:
        writer = worker.writer
        if writer is not None and not writer.is_closing():
            try:
                writer.write(line)
                await writer.drain()
            except (OSError, ConnectionResetError):
                pass
