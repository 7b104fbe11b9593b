"""Run the test suite against real PostgreSQL and Redis.

Makes the backing services available first (the same helper the demo uses), points
the tests at a Redis database and Celery queue of their own so a running demo is not
disturbed, then runs pytest in this process. pytest's exit 5 ("no tests collected")
counts as a failure.
"""

from __future__ import annotations

import os
import sys

import pytest

from devtools.backing_services import ensure_backing_services
from devtools.devstack import ROOT, embedded_requested

TEST_REDIS_DB = 7


def main(argv: list[str]) -> int:
    services = ensure_backing_services(
        prefer_embedded=embedded_requested(),
        data_dir=ROOT / ".data",
        database_name="adaptrain",
        redis_db=TEST_REDIS_DB,
        log=lambda line: print(f"[services] {line}", flush=True),
    )
    try:
        os.environ.update(services.env())
        os.environ.setdefault("CELERY_QUEUE", f"adaptrain-test-{os.getpid()}")
        os.environ.setdefault("CHANNELS_PREFIX", f"adaptrain-test-{os.getpid()}")
        code = pytest.main(argv)
    finally:
        services.stop()
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("error: no tests were collected", file=sys.stderr)
        return 1
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
