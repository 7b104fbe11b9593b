"""Does adaptation pay? KungFu's experiments at small scale: ``python -m bench.adaptive_outcome --json``.

Every run is the teacher–student workload (``examples.teacher_student``: generated data,
label noise) trained by adaptrain's runtime, ``--workers`` processes (native allreduce,
S-SGD, momentum 0.9), through ``bench/_teacher_student_eval_worker.py`` (the example plus
held-out accuracy every ``--eval-every`` samples). This process plays the control plane:
on every whole-job report of rank 0 it evaluates the policy with the product's engine
(``controlplane.policies.engine``, through ``bench.policy_driver``: latest
values, peaks, windows, hysteresis, cooldown, as the control plane does on ingest) and
writes each firing to every worker's stdin as the same ``command`` line the agent
forwards; the workers apply it together at a step boundary. Nothing is scheduled by the
benchmark: the runs differ only in the policy document.

Experiments (``--experiment``):

- ``batch`` (KungFu Fig. 4): fixed global batches ``--batches`` (lr ``--lr`` at batch 64,
  scaled by √(batch/64)) against the built-in template ``gns-adaptive-batch``, started at
  the smallest batch with lr scaling ``sqrt`` and ``adascale`` (the job's ``lr_scaling``
  hyper-parameter). The template's two numbers a user sets for a job are taken from
  ``--max-batch`` (its bound, 1024 in the template) and ``--cooldown-s`` (20 s in the
  template, sized for long jobs; these runs last seconds). Each run trains on
  ``--max-samples`` samples (then the benchmark sends ``stop``); reported per system: wall
  time (training only: evaluation time taken out) and samples to ``--target`` held-out
  accuracy, final accuracy, medians and min–max over ``--seeds``. Also, started at the
  smallest batch with the same lr rules, the smallest policy a user would write for the
  built-in action ``optimize_goodput`` (no template has it): ask for the batch with the
  best goodput every ``--goodput-every`` steps, within the fixed batches' range; the
  engine fits it from the workers' whole-job ``compute_time``, ``comm_time``,
  ``step_time``, ``batch_size``, ``workers`` and ``gns``, as the control plane does.
  ``--systems`` picks among ``fixed``, ``gns`` and ``goodput``.
- ``interference`` (KungFu Fig. 5): ``--nodes`` emulated nodes (network namespaces,
  ``bench.netns``), one worker each, topology ``ring``; from step ``--slow-at`` to
  ``--slow-until`` the path between the two nodes ``--slow-path`` is cut to
  ``--slow-rate`` (``EmulatedNodes.slow_path``). The same run with no policy and with the
  built-in template ``topology-on-interference`` (its ``window``, ``for`` and share of
  the peak from ``--window``, ``--for`` and ``--threshold``): throughput before, during
  and after, and the share of the lost throughput recovered.
- ``scaleout`` (KungFu Fig. 6): throughput with 1…``--max-workers`` workers at the fixed
  global batch ``--batch``, and where the built-in template ``scale-out-while-efficient``
  (an added worker must add ≥ 50 % of the per-worker throughput) stops adding.

``--plot DIR`` draws PNGs of the rows just measured (needs matplotlib: the ``bench``
extra).

Modules: ``common`` (the workload, templates, hyper-parameters and medians; one run with
the benchmark as the control plane is ``bench.policy_driver``'s, shared with
``bench.adaptive_batch``), one per experiment (``batch``, ``interference``,
``scaleout``), ``plots`` and ``cli`` (the command line).
"""

from __future__ import annotations

from bench.adaptive_outcome.batch import goodput_policy, parse_systems
from bench.adaptive_outcome.cli import main

__all__ = ["goodput_policy", "main", "parse_systems"]
