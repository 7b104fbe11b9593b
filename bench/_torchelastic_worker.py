"""One worker of TorchElastic (``torchrun`` with a c10d rendezvous), for ``bench.rescale
--framework torch``: the reference that restarts every worker on a membership change.

DDP over gloo on a ``*_torch`` example's model and data, in TorchElastic's documented
pattern: every (re)started worker builds the model, loads the latest checkpoint (rank 0
writes one after every step: model, optimizer, step) and trains on. Rank 0 appends
``{"step", "time", "size", "restart", "started"}`` to ``$BENCH_STEP_LOG`` after every
step, which is what the pause is read from; ``started`` is when this worker process
began (from ``/proc``), which splits a pause into the agents' part (noticing the change,
the rendezvous, spawning) and the restarted worker's (imports, process group, model,
checkpoint, first step).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from bench._ddp_worker import load


def process_start() -> float:
    """Wall-clock time at which this process started (Linux ``/proc/self/stat``)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def main() -> None:
    started = process_start()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--global-batch", type=int, required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    x, y, build_model = load(args.model, 0, 4096)
    model = torch.nn.parallel.DistributedDataParallel(build_model(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    checkpoint = Path(args.checkpoint)
    step = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
    x_all, y_all = torch.from_numpy(x), torch.from_numpy(y).long()
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    log = open(os.environ["BENCH_STEP_LOG"], "a", buffering=1) if rank == 0 else None
    rng = np.random.default_rng(0)
    while True:
        batch = rng.choice(len(x), args.global_batch, replace=False)
        mine = torch.from_numpy(batch[rank::size])
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x_all[mine]), y_all[mine], reduction="sum")
        (loss * (size / len(batch))).backward()
        optimizer.step()
        step += 1
        if rank == 0:
            tmp = checkpoint.with_suffix(".tmp")
            torch.save(
                {
                    "model": model.module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                },
                tmp,
            )
            tmp.replace(checkpoint)
            log.write(
                json.dumps(
                    {
                        "step": step,
                        "time": time.time(),
                        "size": size,
                        "restart": restart,
                        "started": started,
                    }
                )
                + "\n"
            )


if __name__ == "__main__":
    main()
