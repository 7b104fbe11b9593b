"""One rank of bench.fabric_handshake, run as a script in its own process.

    python bench/_fabric_rank.py RANK PEERS FORMATIONS ALLREDUCE_BYTES [NATIVE_ROOT]

With NATIVE_ROOT it imports agent.native from that directory (the previous build,
for the 'before' figures) instead of this checkout's editable install. It forms the
group FORMATIONS times, every rank starting at the same wall-clock instant (agreed
over the previous group), then times float32 ring allreduces; rank 0 prints one
JSON object.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

rank, peers_text, formations, nbytes = (
    int(sys.argv[1]),
    sys.argv[2],
    int(sys.argv[3]),
    int(sys.argv[4]),
)
native_root = sys.argv[5] if len(sys.argv) > 5 else ""
if native_root:
    # The editable install's finder would answer for agent.*: take it out.
    sys.meta_path[:] = [f for f in sys.meta_path if "_editable" not in type(f).__module__]
    sys.path.insert(0, native_root)

import numpy as np  # noqa: E402

from agent.native import Communicator  # noqa: E402
from agent.native import _collective as native_module  # noqa: E402

SECRET = "c3" * 32
peers = peers_text.split(",")
module_file = native_module.__file__


def form() -> Communicator:
    try:
        return Communicator(rank, peers, timeout_s=60, algorithm="ring", fabric_secret=SECRET)
    except TypeError:  # the build before fabric secrets
        return Communicator(rank, peers, timeout_s=60, algorithm="ring")


comm = form()
formed: list[float] = []
for _ in range(formations):
    start = np.array([time.time() + 0.3])
    comm.broadcast(start, root=0)
    comm.close()
    time.sleep(max(0.0, float(start[0]) - time.time()))
    began = time.perf_counter()
    comm = form()
    mine = np.array([time.perf_counter() - began])
    comm.allreduce(mine, op="max")  # the group has formed when its slowest rank has
    formed.append(float(mine[0]))

x = np.ones(nbytes // 4, dtype=np.float32)
times = []
for i in range(23):
    comm.barrier()
    began = time.perf_counter()
    comm.allreduce(x, op="sum")
    if i >= 3:
        times.append(time.perf_counter() - began)
comm.close()
if rank == 0:
    n = len(peers)
    median = statistics.median(times)
    print(
        json.dumps(
            {
                "module": module_file,
                "formation_s": formed,
                "allreduce_median_s": median,
                "busbw_GBps": nbytes / median / 1e9 * 2 * (n - 1) / n,
            }
        )
    )
