"""A worker for the channel tests: the real runtime Session (agent.runtime.init) without
TensorFlow. Every 10 ms it takes the commands received without gaps — as the Trainer
does, by seq — applies each (counting how often it applied it), answers ``applied`` with that
count as the step and reports a metric. A ``stop`` command ends it with status 0; a
``fail`` command raises (status 1)."""

from __future__ import annotations

import time

from agent import runtime


def main() -> None:
    session = runtime.init()
    applied_seq = session.first_seq
    applications: dict[int, int] = {}
    step = 0
    while True:
        seq = session.commands.received_seq()
        commands = session.commands.take(seq) if seq > applied_seq else []
        applied_seq = max(applied_seq, seq)
        for command in commands:
            applications[command.seq] = applications.get(command.seq, 0) + 1
            if command.action == "fail":
                raise RuntimeError("failing as asked")
            # The reply's step says how many times this worker applied the command, so the
            # test sees a redelivered command answered again, not applied again.
            session.send_applied(command, step=applications[command.seq], lr=0.1)
            if command.action == "stop":
                return
        session.report({"step_metric": float(step)}, step=step)
        step += 1
        time.sleep(0.01)


if __name__ == "__main__":
    main()
