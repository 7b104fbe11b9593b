"""A worker for tests/agent/daemon/test_worker_group_spawn.py and test_gpu_pinning.py: writes
the agent environment it was started with (``ADAPTRAIN_*`` and the GPU pinning's variables)
to ``$ENV_REPORT_DIR/<ADAPTRAIN_ADDRESS>.json``, then exits 0 (after
``$ENV_REPORT_HOLD_S`` seconds)."""

from __future__ import annotations

import json
import os
import time


def main() -> None:
    gpu_keys = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "TF_FORCE_GPU_ALLOW_GROWTH")
    keys = [k for k in os.environ if k.startswith("ADAPTRAIN_") or k in gpu_keys]
    path = os.path.join(
        os.environ["ENV_REPORT_DIR"], os.environ["ADAPTRAIN_ADDRESS"].replace(":", "_") + ".json"
    )
    with open(path + ".tmp", "w") as f:
        json.dump({k: os.environ[k] for k in keys}, f)
    os.replace(path + ".tmp", path)
    time.sleep(float(os.environ.get("ENV_REPORT_HOLD_S") or 0))  # to hold its GPU a while


if __name__ == "__main__":
    main()
