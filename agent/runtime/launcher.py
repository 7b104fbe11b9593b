"""``python -m agent.runtime.launcher <module> [args…]``: how the agent starts a training worker.

It runs ``<module>`` as ``python -m <module>`` would, then tells the agent how it ended:
an ``exit`` message with the status on the worker's agent channel
(:mod:`agent.runtime.channel`), after everything the worker still had buffered. An
agent that restarted is no longer the worker's parent and cannot wait for its exit
status; this message is how it learns whether the worker finished (0) or failed. When
no agent is connected at that moment the worker waits for one (at most the channel's
grace period) so that its last messages — the final metrics, command replies — are not
lost.
"""

from __future__ import annotations

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


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m agent.runtime.launcher <module> [args...]")
    module = sys.argv[1]
    del sys.argv[0]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
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
