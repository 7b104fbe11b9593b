"""Built-in policy templates: KungFu's adaptation policies, ready to copy and edit.

Each is a policy document as ``POST /api/v1/policies/`` takes it. Which ones the
runtime can act on today is stated in each description.
"""

from __future__ import annotations

TEMPLATES: list[dict] = [
    {
        "id": "gns-adaptive-batch",
        "name": "GNS-driven adaptive batch size",
        "description": (
            "KungFu's adaptive batch size: when the gradient noise scale (the batch size at "
            "which gradient noise and signal balance) stays above twice the current global "
            "batch, double the batch, up to 1024. Needs 2+ workers (gns is estimated from "
            "local vs global gradients)."
        ),
        "dry_run": False,
        "rules": [
            {
                "name": "grow batch with noise scale",
                "when": "has(metrics.gns) && gns > 2.0 * double(batch_size)",
                "for": 3,
                "cooldown_s": 20,
                "action": {"type": "set_batch_size", "value": "batch_size * 2"},
                "bounds": {"max": 1024},
            }
        ],
    },
    {
        "id": "sma-to-ssgd",
        "name": "Switch SMA → S-SGD",
        "description": (
            "KungFu's AdaptiveSGD: start with synchronous model averaging, which explores "
            "well early on, and switch to S-SGD once the loss has dropped below half of its "
            "peak; the switch averages the models and optimizer slots once so S-SGD starts "
            "from one model."
        ),
        "dry_run": False,
        "rules": [
            {
                "name": "switch to ssgd",
                "when": "strategy == 'sma' && has(metrics.loss) && loss < 0.5 * peak.loss",
                "action": {"type": "set_strategy", "value": "ssgd"},
            }
        ],
    },
    {
        "id": "scale-out-while-efficient",
        "name": "Scale out while each added worker pays",
        "description": (
            "Add a worker every minute while the throughput gained by the last added worker "
            "stays above 50 % of the per-worker throughput before it (the job must be elastic: "
            "workers min < max; a scale beyond max or the free slots is skipped with the reason). "
            "The condition must hold for 3 evaluations in a row, so that neither the first "
            "report of a run nor the one after a grow (both slowed by tracing the model) is "
            "taken for the throughput to beat."
        ),
        "dry_run": False,
        "rules": [
            {
                "name": "add a worker",
                "when": (
                    "has(metrics.throughput) && (size(last_fire) == 0 || "
                    "throughput - last_fire.throughput >= 0.5 * last_fire.throughput / double(last_fire.workers))"
                ),
                "for": 3,
                "cooldown_s": 60,
                "action": {"type": "scale_workers", "value": "workers + 1"},
                "bounds": {"max": 16},
            }
        ],
    },
    {
        "id": "topology-on-interference",
        "name": "Switch topology under interference",
        "description": (
            "KungFu's interference check: when every throughput report in the policy's window "
            "(its last 10 by default) is under 80 % of the run's best, for 3 evaluations in a "
            "row, switch the allreduce algorithm to the binary tree (all workers switch "
            "together at one step). Judging the whole window rather than the latest report "
            "keeps one slow report on a busy machine from firing it."
        ),
        "dry_run": False,
        "rules": [
            {
                "name": "switch topology",
                "when": (
                    "has(window_max.throughput) && window_max.throughput < 0.8 * peak.throughput "
                    "&& topology != 'tree'"
                ),
                "for": 3,
                "cooldown_s": 120,
                "action": {"type": "set_topology", "value": "tree"},
            }
        ],
    },
    {
        "id": "reroute-on-interference",
        "name": "Route the ring around a slow path",
        "description": (
            "KungFu's adaptation to network interference: when every throughput report in "
            "the policy's window is under 80 % of the run's best, for 3 evaluations in a row, "
            "switch to the routed ring: the workers time a probe to every peer and pass the "
            "ring's data in the order whose slowest hop is fastest. On the routed ring the "
            "workers probe again by themselves when their communication time per step grows "
            "4× (a path slowed after the switch, or the switch fired on noise before it) and "
            "every ring_probe_every steps. Unlike the tree it costs nothing when no path is "
            "slow. When a worker's whole link is slow no ring avoids it: the workers then use "
            "the tree with that worker as a leaf, and the ring again once it has recovered."
        ),
        "dry_run": False,
        "rules": [
            {
                "name": "route around the slow path",
                "when": (
                    "has(window_max.throughput) && window_max.throughput < 0.8 * peak.throughput "
                    "&& topology != 'routed_ring'"
                ),
                "for": 3,
                "cooldown_s": 120,
                "action": {"type": "set_topology", "value": "routed_ring"},
            }
        ],
    },
]
