"""How an agent and its workers find and recognise each other on one node.

Both ends of a worker's channel (the worker listening, :mod:`agent.runtime.channel`; the
agent connecting, :mod:`agent.daemon.workers`) need a socket path short enough for
``AF_UNIX`` whatever directory it is in (:func:`unix_path`), and a re-attaching agent
needs to know that a pid still names the worker it started and not a newcomer that
reused the number (:func:`process_start_time`, :func:`process_alive`). Standard library
only, like the rest of :mod:`agent.protocol`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_UNIX_PATH_MAX = 100  # sun_path holds 108 bytes; leave room for the terminating NUL


@contextlib.contextmanager
def unix_path(path: str) -> Iterator[str]:
    """A name for ``path`` that fits in ``sockaddr_un``: the path itself when short
    enough, else ``/proc/self/fd/<dir fd>/<name>``, valid while the context is open."""
    if len(os.fsencode(path)) <= _UNIX_PATH_MAX:
        yield path
        return
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22),
    or None when there is no such process (or it is a zombie: it has exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain ") ".
    fields = raw[raw.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def process_alive(pid: int, start_time: int | None) -> bool:
    """Whether ``pid`` is still the process that started at ``start_time``."""
    now = process_start_time(pid)
    return now is not None and (start_time is None or now == start_time)
