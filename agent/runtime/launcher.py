"""``python -m agent.runtime.launcher <entrypoint> [args…]``: how the agent starts a worker.

The entrypoint is ``package.module``, run as ``python -m package.module`` would, or
``package.module:function``, imported and then called with no arguments (its return
value, like ``sys.exit``'s argument, is the exit status: None or 0 is success). A job
with a code bundle is started in the bundle's directory, which the agent puts first on
``PYTHONPATH``, so the bundle's modules are found before installed ones. Then it tells
the agent how the worker ended:
an ``exit`` message with the status on the worker's agent channel
(:mod:`agent.runtime.channel`), after everything the worker still had buffered. An
agent that restarted is no longer the worker's parent and cannot wait for its exit
status; this message is how it learns whether the worker finished (0) or failed. When
no agent is connected at that moment the worker waits for one (at most the channel's
grace period) so that its last messages — the final metrics, command replies — are not
lost.
"""

from __future__ import annotations

import importlib
import runpy
import sys
import traceback


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def report_exit(code: int) -> None:
    """Send the exit status on this process's agent channel, if it opened one."""
    from agent.runtime import channel
    from agent.runtime.session import exit_message

    ch = channel.active()
    if ch is None:
        return
    if not ch.orphaned.is_set():
        ch.send(exit_message(code))
        if not ch.wait_flushed(ch.grace_s):
            print("adaptrain: no agent took this worker's last messages", file=sys.stderr)
    ch.close()


def run_entrypoint(entrypoint: str) -> int:
    """Run ``module`` as ``__main__`` or call ``module:function``; the exit status."""
    module, _, function = entrypoint.partition(":")
    if not function:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    target = getattr(importlib.import_module(module), function, None)
    if not callable(target):
        raise AttributeError(
            f"entrypoint {entrypoint!r}: module {module!r} has no function {function!r}"
        )
    result = target()
    if result is None or isinstance(result, int):
        return result or 0
    print(result, file=sys.stderr)
    return 1


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m agent.runtime.launcher <module>[:<function>] [args...]")
    entrypoint = sys.argv[1]
    del sys.argv[0]
    try:
        code = run_entrypoint(entrypoint)
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt:
        from agent.runtime import channel

        ch = channel.active()
        if ch is None or not ch.orphaned.is_set():
            traceback.print_exc()
        code = 130
    except BaseException:  # noqa: BLE001 - the worker failed; say how, as python -m would
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    report_exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
