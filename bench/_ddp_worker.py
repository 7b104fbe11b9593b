"""One worker of the PyTorch reference systems that ``bench.training --framework torch``
compares against.

- ``--system torch_ddp``: ``torch.nn.parallel.DistributedDataParallel`` with the gloo
  backend (one process per worker, rendezvous from ``MASTER_ADDR``/``MASTER_PORT``,
  ``RANK``, ``WORLD_SIZE``; DDP's default 25 MB buckets, allreduce overlapped with
  backward). Every worker computes ``sum(loss) / global_batch × world_size`` over its
  share of the global batch; DDP averages the gradients, which gives the gradient of the
  mean loss over the global batch — the same arithmetic as our S-SGD.
- ``--system plain``: one process, no distribution, the whole batch it is given per step.
- ``--system limit``: ``plain``'s loop on this worker's share plus, after backward, one
  allreduce (sum) of the gradients through our native library and nothing else of our
  runtime: every ``.grad`` is a view of one flat float32 buffer with the same 3 scalar
  and 4-per-rank agreement slots as ours, so the allreduce moves exactly the bytes ours
  moves, in place (peers from ``LIMIT_PEERS``, rank from ``RANK``). The least any
  synchronous data-parallel system can take a step here, with our collective.

Model, data, optimizer (SGD, momentum 0.9) and batch sampling are those of the
``*_torch`` examples and of ``agent.runtime``. Rank 0 (every process, for ``plain``)
prints one JSON line with every step's wall time, from the end of the step before (batch
drawing included, as in ours' reported step times; the loss is read back each step).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def load(model: str, seed: int, samples: int):
    """(x_train, y_train, model builder) for an example, with the example's own code."""
    if model == "synthetic_cnn":
        from examples.synthetic_cnn.train import make_data
        from examples.synthetic_cnn_torch.train import build_model

        x, y = make_data(samples, seed)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y, build_model
    if model == "digits":
        from examples.digits.train import load_data
        from examples.digits_torch.train import build_model

        (x, y), _ = load_data(seed)
        return x, y, build_model
    raise SystemExit(f"unknown model {model!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=("torch_ddp", "plain", "limit"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--global-batch", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="intra- and inter-op threads")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)

    x, y, build_model = load(args.model, args.seed, args.samples)
    model = build_model(args.seed)
    if args.system == "torch_ddp":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, size = dist.get_rank(), dist.get_world_size()
        model = torch.nn.parallel.DistributedDataParallel(model)
    else:
        rank, size = 0, 1
    comm, flat, flat_np = None, None, None
    if args.system == "limit":
        import os

        from agent.native import Communicator

        peers = os.environ["LIMIT_PEERS"].split(",")
        rank, size = int(os.environ["RANK"]), len(peers)
        comm = Communicator(rank, peers)
        params = [p for p in model.parameters() if p.requires_grad]
        n_grads = sum(p.numel() for p in params)
        flat = torch.zeros(n_grads + 3 + 4 * size)  # our buffer's layout and size
        flat_np = flat.numpy()
        offset = 0
        for p in reversed(params):
            p.grad = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    x_all, y_all = torch.from_numpy(x), torch.from_numpy(y).long()

    n, epoch, position = len(x), 0, 0
    perm = np.random.default_rng(args.seed).permutation(n)
    times, losses = [], []
    # Each step's wall time from the end of the one before: batch drawing included, as
    # ours' reported step times include everything its loop does.
    last = time.perf_counter()
    for _ in range(args.steps):
        if position >= n:
            epoch, position = epoch + 1, 0
            perm = np.random.default_rng(args.seed + epoch).permutation(n)
        batch = perm[position : min(position + args.global_batch, n)]
        position += len(batch)
        mine = torch.from_numpy(batch[rank::size])
        if comm is not None:  # limit: the gradients of sum(loss) / B, summed over ranks
            flat.zero_()
            loss_sum = torch.nn.functional.cross_entropy(
                model(x_all[mine]), y_all[mine], reduction="sum"
            )
            (loss_sum / len(batch)).backward()
            comm.allreduce(flat_np, op="sum")
            optimizer.step()
            losses.append(float(loss_sum.detach()) * size / len(batch))  # this rank's share
            now = time.perf_counter()
            times.append(now - last)
            last = now
            continue
        optimizer.zero_grad()
        loss_sum = torch.nn.functional.cross_entropy(
            model(x_all[mine]), y_all[mine], reduction="sum"
        )
        (loss_sum * (size / len(batch))).backward()
        optimizer.step()
        losses.append(float(loss_sum) / len(batch))
        now = time.perf_counter()
        times.append(now - last)
        last = now
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    if rank == 0:
        print(
            json.dumps(
                {
                    "step_times": times,
                    "loss_first": losses[0],
                    "loss_last": losses[-1],
                    "param_checksum": checksum,
                }
            ),
            flush=True,
        )
    if args.system == "torch_ddp":
        torch.distributed.destroy_process_group()
    if comm is not None:
        comm.close()


if __name__ == "__main__":
    main()
