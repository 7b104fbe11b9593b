"""Training throughput, ours vs TensorFlow's MultiWorkerMirroredStrategy: ``python -m bench.training --json``.

For each model (``examples.synthetic_cnn`` at global batch 128, ``examples.digits`` at
global batch 64) and each worker count, three systems train the same model on the same
data with the same global batch, each worker a process with one TensorFlow thread:

- ``adaptrain``: the example itself, run by ``agent.local.run_workers`` (our runtime,
  S-SGD over the native ring allreduce, gradient-noise monitor at its job default);
  the per-step figures are the ``step_time`` it reports every ``log_every`` steps
  (the mean over that window), taken after warm-up.
- ``tf_mwms``: ``bench/_mwms_worker.py`` as N processes with ``TF_CONFIG`` on free
  loopback ports (``tf.distribute.MultiWorkerMirroredStrategy``, Keras custom loop).
- ``plain``: the same loop in one process without distribution, with 2 intra-op
  threads (the whole machine); printed once per model, with ``workers`` 1.
- ``no_comm`` (with ``--floor``, at 2 or more workers): N of those plain processes at
  once, one thread each, each computing its 1/N share of every global batch and never
  communicating. A synchronous step waits for every worker, so the per-window maximum
  over the processes is the compute floor of any data-parallel system on this machine:
  ``no_comm`` ÷ ``tf_mwms`` is the most any system could reach against MWMS in that run.
- ``limit`` (with ``--floor`` and ``--framework torch``, at 2 or more workers): the
  ``no_comm`` loop with one allreduce of the gradient buffer (ours: the same size and
  layout) through our native library added after backward, and nothing else of our
  runtime (``bench/_ddp_worker.py --system limit``): the least a synchronous step can
  take on this machine with our collective, so ours ÷ ``limit`` is how close the runtime
  comes to what is physically possible here.

``--framework torch`` measures the PyTorch runtime the same way: ``adaptrain`` runs the
``*_torch`` examples (``agent.runtime.torch``), the peer is ``torch_ddp``
(``torch.nn.parallel.DistributedDataParallel`` over gloo, ``bench/_ddp_worker.py``), and
``plain`` and ``no_comm`` are the same loop in PyTorch without distribution.

``--monitor-off-too`` also runs ours with the gradient-noise monitor off
(``adaptrain_no_monitor``), interleaved in the same run, for the monitor's overhead.

Rounds run the systems in alternating order (ABBA: odd rounds in reverse), so a system
that always followed another (ours with the monitor, straight after the one-worker runs)
does not carry a bias of its place in the run. Ours' rows also give ``median_comm_s``,
the median per-step time it spent in the step's last (synchronous) allreduce, which
includes waiting for the gradient buckets that backward did not hide.

``median_step_s`` is the median over post-warm-up windows of ``log_every`` steps of
the mean step time in the window (the same windows for every system), and
``samples_per_s`` is ``global_batch / median_step_s``; with ``--rounds``, the windows of
all rounds are pooled and ``round_samples_per_s`` lists each round's own figure. Lines are JSON with ``--json``;
otherwise a table. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from agent.local import free_port, job_series, peer_list, run_workers

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ModelSetup:
    module: str
    global_batch: int
    steps: int  # default steps per run
    log_every: int  # window of the reported step_time
    lr: float


MODELS = {
    "synthetic_cnn": ModelSetup("examples.synthetic_cnn.train", 128, 30, 5, 0.01),
    "digits": ModelSetup("examples.digits.train", 64, 600, 20, 0.05),
}
# --framework torch: the PyTorch twins of the examples, the same sizes.
TORCH_MODELS = {
    name: replace(setup, module=setup.module.replace(".train", "_torch.train"))
    for name, setup in MODELS.items()
}
# The peer each framework's runtime is compared with, and the module its workers run.
PEERS = {
    "tensorflow": ("tf_mwms", "bench._mwms_worker"),
    "torch": ("torch_ddp", "bench._ddp_worker"),
}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def windows(step_times: list[float], size: int) -> list[float]:
    """Mean step time of each full window of ``size`` consecutive steps (as the runtime reports)."""
    return [
        statistics.fmean(step_times[i : i + size])
        for i in range(0, len(step_times) - size + 1, size)
    ]


def warmup_steps(steps: int, log_every: int) -> int:
    """Steps left out at the start: tracing, first allocations, rendezvous. A fifth of
    the run, rounded up to a whole window, and at least one window."""
    return max(log_every, -(-steps // 5 // log_every) * log_every)


def run_ours(
    setup: ModelSetup, workers: int, steps: int, monitor_every: int
) -> tuple[list[float], list[float]]:
    """Our per-window step times and per-step communication times, after warm-up."""
    hp = {
        "batch_size": setup.global_batch,
        "lr": setup.lr,
        "steps": steps,
        "log_every": setup.log_every,
        "monitor_every": monitor_every,
        "seed": 0,
    }
    messages = run_workers(workers, hp, module=setup.module, timeout_s=1200)
    skip = warmup_steps(steps, setup.log_every)

    def measured(name: str) -> list[float]:
        series = job_series(messages[0], name)
        return [
            t for step, t in sorted(series.items()) if step > skip and step % setup.log_every == 0
        ]

    return measured("step_time"), measured("comm_time")


def run_reference(
    system: str,
    model: str,
    setup: ModelSetup,
    workers: int,
    steps: int,
    threads: int,
    framework: str = "tensorflow",
) -> list[float]:
    command = [
        sys.executable,
        "-m",
        PEERS[framework][1],
        "--system",
        system,
        "--model",
        model,
        "--global-batch",
        str(setup.global_batch),
        "--steps",
        str(steps),
        "--threads",
        str(threads),
        "--lr",
        str(setup.lr),
    ]
    peers = peer_list(workers)
    master_port = str(free_port())
    procs = []
    for rank in range(workers):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if system == "tf_mwms":
            env["TF_CONFIG"] = json.dumps(
                {"cluster": {"worker": peers}, "task": {"type": "worker", "index": rank}}
            )
        elif system == "limit":
            env.update(LIMIT_PEERS=",".join(peers), RANK=str(rank))
        elif system == "torch_ddp":
            env.update(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=master_port,
                RANK=str(rank),
                WORLD_SIZE=str(workers),
            )
        procs.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for rank, proc in enumerate(procs):
            out, err = proc.communicate(timeout=1200)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"{system} worker {rank} exited with {proc.returncode}:\n{err[-3000:]}"
                )
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    skip = warmup_steps(steps, setup.log_every)
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs if out.strip()]
    per_process = [windows(result["step_times"][skip:], setup.log_every) for result in results]
    # MWMS prints from rank 0 only; independent processes (no_comm) each print, and a
    # lock-step system would wait for the slowest of them in every window.
    return [max(window) for window in zip(*per_process, strict=True)]


def run_no_comm(
    model: str, setup: ModelSetup, workers: int, steps: int, framework: str = "tensorflow"
) -> list[float]:
    """N plain single-threaded processes at once, each on its 1/N share of the global
    batch, with no communication: the compute floor of a synchronous N-worker step."""
    share = replace(setup, global_batch=setup.global_batch // workers)
    return run_reference("plain", model, share, workers, steps, threads=1, framework=framework)


def record(
    system: str,
    model: str,
    setup: ModelSetup,
    workers: int,
    window_times: list[float],
    framework: str = "tensorflow",
    rounds: list[list[float]] | None = None,
    comm_times: list[float] | None = None,
) -> dict:
    if not window_times:
        raise RuntimeError(
            f"{system}/{model}/{workers}: no step times after warm-up; raise --steps"
        )
    median = statistics.median(window_times)
    row = {
        "framework": framework,
        "system": system,
        "model": model,
        "workers": workers,
        "global_batch": setup.global_batch,
        "samples_per_s": round(setup.global_batch / median, 2),
        "median_step_s": round(median, 6),
    }
    if comm_times:
        row["median_comm_s"] = round(statistics.median(comm_times), 6)
    if rounds and len(rounds) > 1:
        row["round_samples_per_s"] = [
            round(setup.global_batch / statistics.median(r), 2) for r in rounds if r
        ]
    return row


def print_table(rows: list[dict], peer: str = "tf_mwms") -> None:
    print(
        f"{'model':<14}{'workers':>8}{'system':>11}{'samples/s':>12}{'step s':>11}{'vs ' + peer:>13}"
    )
    by_key = {(r["model"], r["workers"], r["system"]): r for r in rows}
    for r in rows:
        mwms = by_key.get((r["model"], r["workers"], peer))
        ratio = (
            f"{r['samples_per_s'] / mwms['samples_per_s']:.2f}x"
            if mwms and r["system"] != peer
            else ""
        )
        print(
            f"{r['model']:<14}{r['workers']:>8}{r['system']:>11}{r['samples_per_s']:>12.1f}"
            f"{r['median_step_s']:>11.4f}{ratio:>13}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument(
        "--models", default="synthetic_cnn,digits", help=f"comma-separated: {', '.join(MODELS)}"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per run (default: 30 for synthetic_cnn, 600 for digits); "
        "the first fifth is warm-up",
    )
    parser.add_argument(
        "--monitor-every",
        type=int,
        default=1,
        help="our gradient-noise monitor interval (1, the job default; 0 turns it off)",
    )
    parser.add_argument("--plain-threads", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved repetitions, windows pooled"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run no_comm: N independent single-threaded processes on their shares "
        "of each batch, the compute floor of any N-worker system; and with --framework "
        "torch, limit: that loop plus one native allreduce of the gradients per step",
    )
    parser.add_argument(
        "--framework",
        choices=tuple(PEERS),
        default="tensorflow",
        help="the runtime to measure: tensorflow (against tf_mwms) or torch (against torch_ddp)",
    )
    parser.add_argument(
        "--monitor-off-too",
        action="store_true",
        help="also run ours with the gradient-noise monitor off (adaptrain_no_monitor), "
        "interleaved in the same run",
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args()
    framework = args.framework
    peer = PEERS[framework][0]
    models_of = TORCH_MODELS if framework == "torch" else MODELS
    worker_counts = [int(w) for w in args.workers.split(",") if w]
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not worker_counts or min(worker_counts) < 1 or args.rounds < 1:
        parser.error(f"models must be among {', '.join(MODELS)}; worker counts and rounds positive")
    for model in models:
        steps = args.steps or MODELS[model].steps
        if steps < warmup_steps(steps, MODELS[model].log_every) + MODELS[model].log_every:
            parser.error(f"--steps {steps} leaves no measured window after warm-up for {model}")
    started = time.perf_counter()
    # Rounds interleave the systems, so a burst of load from elsewhere on the machine
    # lands on all of them rather than on one; the windows of all rounds are pooled.
    pooled: dict[tuple[str, str, int], list[float]] = {}
    per_round: dict[tuple[str, str, int], list[list[float]]] = {}
    comm_pooled: dict[tuple[str, str, int], list[float]] = {}
    for round_index in range(args.rounds):
        for model in models:
            setup = models_of[model]
            steps = args.steps or setup.steps
            systems: tuple[str, ...] = ("adaptrain", peer)
            if args.floor:
                systems += ("no_comm", "limit") if framework == "torch" else ("no_comm",)
            if args.monitor_off_too:
                systems = ("adaptrain", "adaptrain_no_monitor", *systems[1:])
            if round_index % 2:  # ABBA: every other round in reverse order
                systems = systems[::-1]
            runs = [("plain", 1)] + [
                (system, n)
                for n in worker_counts
                for system in systems
                # One worker has no floor or limit to measure and never monitors
                # (nothing to average).
                if system not in ("no_comm", "limit", "adaptrain_no_monitor") or n > 1
            ]
            for system, workers in runs:
                log(
                    f"round {round_index + 1}/{args.rounds}, {model}: {system} with {workers} worker(s), "
                    f"{steps} steps ({time.perf_counter() - started:.0f} s so far)"
                )
                if system in ("adaptrain", "adaptrain_no_monitor"):
                    every = args.monitor_every if system == "adaptrain" else 0
                    times, comm = run_ours(setup, workers, steps, every)
                    comm_pooled.setdefault((model, system, workers), []).extend(comm)
                elif system == "limit":
                    times = run_reference(
                        "limit", model, setup, workers, steps, threads=1, framework=framework
                    )
                elif system == peer:
                    times = run_reference(
                        peer, model, setup, workers, steps, threads=1, framework=framework
                    )
                elif system == "no_comm":
                    times = run_no_comm(model, setup, workers, steps, framework)
                else:
                    times = run_reference(
                        "plain",
                        model,
                        setup,
                        1,
                        steps,
                        threads=args.plain_threads,
                        framework=framework,
                    )
                pooled.setdefault((model, system, workers), []).extend(times)
                per_round.setdefault((model, system, workers), []).append(times)
    rows = [
        record(
            system,
            model,
            models_of[model],
            workers,
            times,
            framework,
            per_round[key],
            comm_pooled.get(key),
        )
        for key, times in pooled.items()
        for (model, system, workers) in [key]
    ]
    log(f"done in {time.perf_counter() - started:.0f} s")
    if args.json:
        for row in rows:
            print(json.dumps(row), flush=True)
    if not args.json:
        print_table(rows, peer)


if __name__ == "__main__":
    main()
