"""A worker for tests/agent/daemon/test_worker_group_spawn.py: writes the agent environment it
was started with to ``$ENV_REPORT_DIR/<ADAPTRAIN_ADDRESS>.json`` and exits 0."""

from __future__ import annotations

import json
import os


def main() -> None:
    keys = [k for k in os.environ if k.startswith("ADAPTRAIN_")]
    path = os.path.join(
        os.environ["ENV_REPORT_DIR"], os.environ["ADAPTRAIN_ADDRESS"].replace(":", "_") + ".json"
    )
    with open(path + ".tmp", "w") as f:
        json.dump({k: os.environ[k] for k in keys}, f)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
