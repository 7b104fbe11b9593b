"""Asynchronous calls of the :class:`~agent.native.Communicator` facade: the
:class:`Handle` a ``*_async`` call returns and the one thread that runs them in order."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from agent.native._checks import _check_timeout

T = TypeVar("T")


class Handle(Generic[T]):
    """The pending result of an asynchronous call (``Communicator.*_async``).

    :meth:`wait` returns what the synchronous call would have returned, or
    raises what it would have raised. Until then the arrays the call was given
    belong to it: do not read or write them.
    """

    def __init__(self, description: str) -> None:
        self._description = description
        self._finished = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        """True once the call has finished (successfully or not)."""
        return self._finished.is_set()

    def wait(self, timeout_s: float | None = None) -> T:
        """The call's result, waiting up to ``timeout_s`` seconds (None: as long as it takes).

        Raises the call's own exception if it failed, and the built-in
        ``TimeoutError`` if it is still running after ``timeout_s`` (it keeps
        running; wait again). The call itself is bounded by the
        communicator's timeout either way.
        """
        if timeout_s is not None:
            _check_timeout(timeout_s)
        if not self._finished.wait(timeout_s):
            raise TimeoutError(
                f"{self._description} is still running after {timeout_s} s; call wait() again"
            )
        if self._error is not None:
            raise self._error
        return self._result

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self._result, self._error = result, error
        self._finished.set()

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<Handle {self._description} {state}>"


class _CallQueue:
    """One background thread that runs a communicator's asynchronous calls in submission order.

    One thread is enough: the native calls release the GIL, so Python keeps
    computing while they move bytes, and one-at-a-time in submission order is
    exactly what keeps every rank's sequence of collectives the same.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Handle[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._unfinished = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], T], description: str) -> Handle[T]:
        handle: Handle[T] = Handle(description)
        with self._idle:
            self._unfinished += 1
        self._calls.put((call, handle))
        return handle

    def drain(self) -> None:
        """Wait until every call submitted so far has finished."""
        with self._idle:
            self._idle.wait_for(lambda: self._unfinished == 0)

    def stop(self) -> None:
        """Let the calls already queued finish (or fail), then end the thread."""
        self._calls.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            call, handle = item
            try:
                result, error = call(), None
            except BaseException as caught:  # noqa: BLE001 - handed to wait()
                result, error = None, caught
            handle._finish(result, error)
            with self._idle:
                self._unfinished -= 1
                self._idle.notify_all()
