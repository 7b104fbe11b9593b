"""The worker of ``bench.logs``: ``python -m agent.runtime.launcher bench._printing_worker
<training module>`` (the benchmark's ``AGENT_PYTHON`` wrapper names it in place of the
job's entrypoint). Its script is ``$LOG_BENCH_DIR/seed-<seed>.json``:

* ``{"mode": "latency", "lines": N, "rate": R}``: print N lines ``latency <unix time>``
  at R per second, each stamped just before it is printed, and exit;
* ``{"mode": "train", "rate": R, "sink": "stdout"}``: print R lines a second from a
  thread (R = 0: none) while the training module runs in the main thread, as a chatty
  training script would; with ``"sink": "devnull"`` the same prints go to /dev/null (the
  cost of printing itself, without capture and shipping).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import threading
import time
from pathlib import Path
from typing import TextIO


def _print_at(
    rate: float, count: int | None = None, *, stamp: bool = False, file: TextIO | None = None
) -> None:
    start = time.monotonic()
    i = 0
    while count is None or i < count:
        text = (
            f"latency {time.time():.6f}" if stamp else f"step log line {i}: loss 0.1234 acc 0.9876"
        )
        print(text, flush=True, file=file or sys.stdout)
        i += 1
        ahead = start + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


def main() -> None:
    params = json.loads(os.environ.get("ADAPTRAIN_PARAMS") or "{}")
    seed = params.get("hyperparameters", {}).get("seed", 0)
    script = json.loads((Path(os.environ["LOG_BENCH_DIR"]) / f"seed-{seed}.json").read_text())
    rate = float(script.get("rate", 0))
    if script["mode"] == "latency":
        _print_at(rate, int(script["lines"]), stamp=True)
        return
    if rate:
        sink = open(os.devnull, "w") if script.get("sink") == "devnull" else sys.stdout  # noqa: SIM115
        threading.Thread(target=_print_at, args=(rate,), kwargs={"file": sink}, daemon=True).start()
    module = sys.argv[1]
    del sys.argv[0]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
