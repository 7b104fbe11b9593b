"""Workers for test_run_workers.py (agent.local.run_workers); the hyper-parameter ``mode`` says what
each rank does."""

from __future__ import annotations

import sys
import time

from agent import runtime


def main() -> None:
    session = runtime.init()
    mode = session.hyperparameters["mode"]
    if mode == "chatty":
        # Rank 1 writes far more than a pipe holds (~600 KB) before a barrier that rank 0
        # is already waiting in.
        if session.rank == 1:
            for i in range(4000):
                session.report({"chatter": float(i)}, step=i, per_rank=True)
        session.communicator.barrier()
    elif mode == "rank0_fails":
        if session.rank == 0:
            print("rank 0 gives up", file=sys.stderr, flush=True)
            sys.exit(3)
        time.sleep(600)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
