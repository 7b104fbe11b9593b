"""``python -m agent.daemon.logkeeper``: the process that writes one worker's output to
its log file, for as long as the worker runs.

The agent starts one per worker, reading the worker's stdout and stderr through two
pipes. Like the worker it runs in a session of its own, so it outlives an agent restart;
it is the file's only writer, so it can rotate the file safely (a file the worker held
open itself could only be truncated under it, losing what it wrote meanwhile). It writes
each line as a record of :mod:`agent.daemon.logs` — time, stream, text — as soon as it
has it (the agent tails the file), so the two streams keep their order and every line
its time. It never blocks the worker for long: a line longer than ``--max-line`` bytes
is cut there (the record says so) and the rest of it skipped, and if the disk refuses a
write the output is counted and dropped, and the loss is recorded once writing works
again. It exits when both pipes are closed: the worker, and whatever it started, ended.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import time
import traceback
from pathlib import Path

from agent.daemon.logs import NOTE, format_record, rotate, stamped_record, timestamp
from agent.protocol import vocabulary as v

READ_SIZE = 1 << 16
PARTIAL_AFTER_S = 1.0  # a line left without its line break this long is written as a part
# After a read that emptied the pipes, wait this long before the next: a worker printing
# line by line is then read (and its lines written) in tens, not one system call each.
COALESCE_S = 0.01


class _Stream:
    """One of the worker's pipes: the start of a line not yet ended, and whether the rest
    of an overlong line is being skipped."""

    def __init__(self, name: str, fd: int):
        self.name = name
        self.fd = fd
        self.pending = b""
        self.pending_since = 0.0
        self.skipping = False


class Keeper:
    def __init__(self, path: Path, *, max_bytes: int, max_line: int):
        self.path = path
        self.max_bytes = max_bytes
        self.max_line = max_line
        self.fd = -1
        self.size = 0
        self.lost = 0  # bytes of output dropped because the file could not be written
        self.lost_because = ""

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.size = os.fstat(self.fd).st_size

    def write(self, records: list[bytes]) -> None:
        data = b"".join(records)
        if not data:
            return
        try:
            if self.fd < 0:
                self._open()
            if self.lost:
                note = f"{NOTE} {self.lost} bytes of output lost: {self.lost_because}"
                data = format_record(time.time(), v.STDERR, note.encode()) + data
            if self.size and self.size + len(data) > self.max_bytes:
                os.close(self.fd)
                self.fd = -1
                rotate(self.path)
                self._open()
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
                self.size += written
            self.lost = 0
        except OSError as exc:  # disk full, file system gone: keep the worker going
            self.lost += len(data)
            self.lost_because = f"the log file could not be written ({exc.strerror or exc})"
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def lines(self, stream: _Stream, data: bytes, now: float) -> list[bytes]:
        """The records for what ``stream`` delivered (``data``; empty at its end)."""
        records = []
        stamp = timestamp(now)
        chunks = (stream.pending + data).split(b"\n")
        stream.pending = b""
        ended = chunks[:-1]
        rest = chunks[-1]
        for line in ended:
            if stream.skipping:
                stream.skipping = False  # the overlong line ends here
                continue
            records.append(self._record(stamp, stream, line))
        if not data and rest:  # the stream ended without a final line break
            records.append(self._record(stamp, stream, rest))
            rest = b""
        if rest:
            if stream.skipping:
                rest = b""
            elif len(rest) > self.max_line:
                records.append(self._record(stamp, stream, rest))
                stream.skipping = True
                rest = b""
        if rest and not stream.pending_since:
            stream.pending_since = now
        elif not rest:
            stream.pending_since = 0.0
        stream.pending = rest
        return records

    def _record(self, stamp: bytes, stream: _Stream, line: bytes) -> bytes:
        if len(line) > self.max_line:
            note = f" {NOTE} line cut at {self.max_line} bytes".encode()
            line = line[: self.max_line] + note
        return stamped_record(stamp, stream.name, line)

    def stale(self, stream: _Stream, now: float) -> list[bytes]:
        """A part of a line waiting too long for its line break is written now."""
        if stream.pending and now - stream.pending_since >= PARTIAL_AFTER_S:
            part, stream.pending, stream.pending_since = stream.pending, b"", 0.0
            return [format_record(now, stream.name, part, partial=True)]
        return []

    def run(self, streams: list[_Stream]) -> None:
        selector = selectors.DefaultSelector()
        for stream in streams:
            selector.register(stream.fd, selectors.EVENT_READ, stream)
        open_streams = len(streams)
        while open_streams:
            events = selector.select(timeout=PARTIAL_AFTER_S / 2)
            now = time.time()
            records: list[bytes] = []
            drained = True
            for key, _ in events:
                stream = key.data
                try:
                    data = os.read(stream.fd, READ_SIZE)
                except InterruptedError:
                    continue
                drained = drained and len(data) < READ_SIZE
                records += self.lines(stream, data, now)
                if not data:
                    selector.unregister(stream.fd)
                    os.close(stream.fd)
                    open_streams -= 1
            for stream in streams:
                records += self.stale(stream, now)
            self.write(records)
            if events and drained:
                time.sleep(COALESCE_S)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="the worker's log file")
    parser.add_argument("--stdout-fd", type=int, required=True)
    parser.add_argument("--stderr-fd", type=int, required=True)
    parser.add_argument("--max-bytes", type=int, required=True, help="rotate beyond this size")
    parser.add_argument("--max-line", type=int, required=True, help="cut longer lines")
    args = parser.parse_args(argv)
    # It ends when the worker's pipes close, not when a signal meant for others arrives.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    keeper = Keeper(args.path, max_bytes=args.max_bytes, max_line=args.max_line)
    streams = [_Stream(v.STDOUT, args.stdout_fd), _Stream(v.STDERR, args.stderr_fd)]
    try:
        keeper.run(streams)
    except Exception:  # noqa: BLE001 - say why in the log itself, where someone will look
        note = f"{NOTE} the log keeper failed; later output is not kept:\n{traceback.format_exc()}"
        keeper.write(
            [format_record(time.time(), v.STDERR, line.encode()) for line in note.splitlines()]
        )
        raise


if __name__ == "__main__":
    main()
