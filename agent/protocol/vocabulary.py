"""The words every part of adaptrain shares: sync strategies, topologies, command actions,
lr-scaling rules, worker membership events, job reports, metric names, log streams and
where a job's code comes from.

Each group is a :class:`Terms`: a tuple of the names in their canonical order (so
``"ssgd" in STRATEGIES`` and ``", ".join(ACTIONS)`` work as with a plain tuple), with a
one-line description of each. Django ``TextChoices`` are built from
:meth:`Terms.enum_members`, the policy engine reads the tuples and :data:`ACTION_VALUES`,
and the browser reads :func:`vocabulary` (JSON). See docs/protocols.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from agent.protocol import PROTOCOL_VERSION


class Terms(tuple[str, ...]):
    """Names in their canonical order, each with a short description."""

    descriptions: Mapping[str, str]

    def __new__(cls, described: Mapping[str, str]) -> Terms:
        terms = super().__new__(cls, described)
        terms.descriptions = MappingProxyType(dict(described))
        return terms

    def enum_members(self) -> list[tuple[str, str]]:
        """``[("SSGD", "ssgd"), …]``: the members of an enum (e.g. Django's
        ``TextChoices("Strategy", STRATEGIES.enum_members())``) with these values."""
        return [(name.upper(), name) for name in self]

    def to_json(self) -> list[dict[str, str]]:
        return [{"name": name, "description": self.descriptions[name]} for name in self]


# -- sync strategies and topologies ---------------------------------------------------------
STRATEGIES = Terms(
    {
        "ssgd": "synchronous SGD: gradients are averaged every step; every worker holds the "
        "same model",
        "sma": "synchronous model averaging: each worker applies its own gradient and every "
        "step the models are pulled a fraction sma_alpha towards their average",
        "pair": "pair averaging (AD-PSGD): each worker averages its model with one random "
        "peer's latest and applies its own gradient; no collective over the model",
    }
)
TOPOLOGIES = Terms(
    {
        "ring": "bandwidth-optimal ring allreduce (reduce-scatter, then all-gather)",
        "tree": "binary-tree allreduce (fewer steps; better for small tensors)",
        "star": "star allreduce through rank 0",
        "hierarchical": "reduce inside each node over shared memory, allreduce across nodes, "
        "then share inside each node (jobs with several workers per node; else the ring)",
        "auto": "the collective library picks per call, by message size, group size and "
        "workers per node",
        "routed_ring": "the ring in an order that avoids the slowest paths between workers: "
        "they time a probe to every peer when it is chosen, in each new cluster version, "
        "every ring_probe_every steps (default 100) and when their communication time per "
        "step grows 4×, and take the ring whose slowest hop is fastest (the tree with a "
        "worker as a leaf while that worker's whole link is slow)",
    }
)

# -- commands -------------------------------------------------------------------------------
START = "start"
SET_BATCH_SIZE = "set_batch_size"
SET_LR = "set_lr"
SCALE_WORKERS = "scale_workers"
SET_STRATEGY = "set_strategy"
SET_TOPOLOGY = "set_topology"
CHECKPOINT = "checkpoint"
PAUSE = "pause"
RESUME = "resume"
STOP = "stop"

# What policies and users may ask of a running job (the contract's actions).
ACTIONS = Terms(
    {
        SET_BATCH_SIZE: "change the global batch size (the lr follows the job's lr_scaling rule)",
        SET_LR: "change the learning rate",
        SCALE_WORKERS: "grow or shrink the job to this many workers (elastic jobs)",
        SET_STRATEGY: "switch the sync strategy",
        SET_TOPOLOGY: "switch the allreduce topology",
        CHECKPOINT: "write a checkpoint now (needs the checkpoint_dir hyper-parameter)",
        PAUSE: "stop taking training steps until resume",
        RESUME: "take training steps again after pause",
        STOP: "end training at the next agreed step boundary",
    }
)
# Every action a ``command`` frame may carry: the actions plus the control plane's own.
COMMAND_TYPES = Terms(
    {START: "start a job's workers on a node (sent by the scheduler)", **ACTIONS.descriptions}
)
# Actions the control plane and the agents carry out; a worker only counts their seq.
AGENT_ACTIONS = Terms({SCALE_WORKERS: ACTIONS.descriptions[SCALE_WORKERS]})
# The value an action takes: a number of this type, or one of these names (None: no value).
ACTION_VALUES: Mapping[str, type[int] | type[float] | Terms | None] = MappingProxyType(
    {
        SET_BATCH_SIZE: int,
        SET_LR: float,
        SCALE_WORKERS: int,
        SET_STRATEGY: STRATEGIES,
        SET_TOPOLOGY: TOPOLOGIES,
        CHECKPOINT: None,
        PAUSE: None,
        RESUME: None,
        STOP: None,
    }
)

# What only a policy rule may ask: the control plane works out the command it becomes.
OPTIMIZE_GOODPUT = "optimize_goodput"
POLICY_ACTIONS = Terms(
    {
        **ACTIONS.descriptions,
        OPTIMIZE_GOODPUT: "(policies only) set the batch size with the highest goodput for the "
        "job's current workers, from its step times and noise scale (Pollux); issued as "
        "set_batch_size, the lr following the job's lr_scaling rule (adascale: AdaScale)",
    }
)
POLICY_ACTION_VALUES: Mapping[str, type[int] | type[float] | Terms | None] = MappingProxyType(
    {**ACTION_VALUES, OPTIMIZE_GOODPUT: None}
)

# -- learning-rate scaling when the batch size changes (the lr_scaling hyper-parameter) ------
LR_SCALING_RULES = Terms(
    {
        "none": "keep the learning rate",
        "linear": "lr ∝ batch size (Goyal et al. 2017)",
        "sqrt": "lr ∝ √batch size (variance-preserving)",
        "adascale": "AdaScale gain from the gradient noise scale (Johnson et al. 2020); "
        "sqrt without a noise estimate",
    }
)

# -- elastic membership: what a worker reports (relayed to the control plane) ---------------
STANDBY = "standby"
RESCALED = "rescaled"
LEFT = "left"
PEER_FAILED = "peer_failed"
EXITED = "exited"

WORKER_EVENTS = Terms(
    {
        STANDBY: "a joiner built its model and waits to be let in",
        RESCALED: "a worker trains in a new cluster version",
        LEFT: "a worker was removed from the cluster and exited cleanly",
        PEER_FAILED: "a collective failed; the worker waits for a version without the dead peer",
        EXITED: "a worker died while its job can go on without it (said by its agent)",
    }
)

# -- what an agent reports about its part of a job (REST job report) ------------------------
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
STOPPED = "stopped"

JOB_REPORT_STATUSES = Terms(
    {
        RUNNING: "the node's workers started",
        SUCCEEDED: "a member finished training here",
        FAILED: "a worker failed and the job with it (or the workers could not start)",
        STOPPED: "the node's workers stopped, left the cluster or died while the job goes on",
    }
)
WORKER_REPORT_STATES = Terms(
    {
        RUNNING: "the worker started (with its port)",
        LEFT: "the worker left the cluster and exited cleanly",
        FAILED: "the worker died while the job went on (with its exit code and error)",
    }
)

# -- metrics --------------------------------------------------------------------------------
# Whole-job series a policy reads by name (rank 0 reports them for the job); per-worker
# series of the same names carry the worker's rank.
METRICS = Terms(
    {
        "loss": "training loss, mean over the last log_every steps",
        "accuracy": "training accuracy, mean over the last log_every steps",
        "val_accuracy": "validation accuracy (reported by training scripts that evaluate)",
        "throughput": "samples per second, whole job",
        "step_time": "seconds per training step",
        "compute_time": "seconds per step spent computing gradients and applying them",
        "comm_time": "seconds per step spent in collectives",
        "batch_size": "global batch size",
        "lr": "learning rate",
        "workers": "number of workers in the current cluster version",
        "gns": "gradient noise scale (the critical batch size estimate)",
        "grad_variance": "smoothed per-sample gradient variance tr(Σ)",
        "grad_snr": "gradient signal-to-noise ratio |G|² / (tr(Σ) / B)",
        "ring_hop_mbps": "routed_ring: the slowest hop of the ring in force, Mbit/s as the "
        "workers' probe measured it (each time they probe)",
        "link_mbps_min": "routed_ring: the slowest path between any two workers, Mbit/s as "
        "the probe measured it",
        "gpu_util": "percent of time the worker's GPU was busy (per worker; whole-job: the mean "
        "over the workers on rank 0's node); sampled by the agent with each heartbeat",
        "gpu_mem": "percent of the worker's GPU memory in use (per worker; whole-job as gpu_util)",
    }
)
# Series the runtime records for its own bookkeeping, not for policies.
BOOKKEEPING_METRICS = Terms(
    {
        "checkpoint_step": "the step of the checkpoint rank 0 wrote last (a restart resumes "
        "from it)",
        "param_checksum": "per worker: a checksum of the model parameters (equal across "
        "workers where the strategy keeps them equal)",
    }
)

# -- where a job's code comes from (AGENT_CODE: the kinds a node accepts) ---------------------
CODE_BUNDLES = "bundles"
CODE_INSTALLED = "installed"
CODE_EXAMPLES = "examples"
CODE_KINDS = Terms(
    {
        CODE_BUNDLES: "a code bundle the job's owner uploaded (adaptrain run, the new-job form), "
        "fetched by the node and run from its own directory",
        CODE_INSTALLED: "a module installed on the node (its Python environment)",
        CODE_EXAMPLES: "the examples that ship with adaptrain (examples.*)",
    }
)
# What an agent that does not say accepts: one from before bundles (it cannot fetch them).
CODE_KINDS_UNSAID = (CODE_INSTALLED, CODE_EXAMPLES)


def code_kind(entrypoint: str, bundle: str | None) -> str:
    """Where a job's code comes from: its bundle, the examples or the node's installation
    (``entrypoint`` is the module the workers run, ``package.module[:function]``)."""
    if bundle:
        return CODE_BUNDLES
    return CODE_EXAMPLES if entrypoint.split(".")[0].split(":")[0] == "examples" else CODE_INSTALLED


# -- worker output (log lines the agents ship) -----------------------------------------------
STDOUT = "stdout"
STDERR = "stderr"
LOG_STREAMS = Terms(
    {
        STDOUT: "what the worker wrote to its standard output",
        STDERR: "what the worker wrote to its standard error (tracebacks, warnings), and the "
        "notes the agent adds ([adaptrain] N lines dropped)",
    }
)


def vocabulary() -> dict[str, Any]:
    """Every group above as JSON-able data, for the browser and API clients."""
    actions = []
    for name in POLICY_ACTIONS:
        kind = POLICY_ACTION_VALUES[name]
        action: dict[str, Any] = {"name": name, "description": POLICY_ACTIONS.descriptions[name]}
        if isinstance(kind, Terms):
            action.update(value="choice", choices=list(kind))
        else:
            action["value"] = None if kind is None else kind.__name__
        actions.append(action)
    return {
        "protocol": PROTOCOL_VERSION,
        "strategies": STRATEGIES.to_json(),
        "topologies": TOPOLOGIES.to_json(),
        "actions": actions,
        "command_types": COMMAND_TYPES.to_json(),
        "lr_scaling_rules": LR_SCALING_RULES.to_json(),
        "worker_events": WORKER_EVENTS.to_json(),
        "job_report_statuses": JOB_REPORT_STATUSES.to_json(),
        "worker_report_states": WORKER_REPORT_STATES.to_json(),
        "metrics": METRICS.to_json(),
        "bookkeeping_metrics": BOOKKEEPING_METRICS.to_json(),
        "log_streams": LOG_STREAMS.to_json(),
        "code_kinds": CODE_KINDS.to_json(),
    }
