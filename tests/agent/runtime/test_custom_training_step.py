"""A script with its own tf.function training step stays in sync through the public
building blocks: the same weights on every worker after every step, and it learns."""

from __future__ import annotations

from agent.local import run_workers


def per_rank(messages: list[dict], name: str) -> dict[int, float]:
    return {
        p["step"]: p["value"]
        for m in messages
        if m["type"] == "metrics"
        for p in m["points"]
        if p["name"] == name
    }


def test_distributed_optimizer_keeps_workers_identical_inside_tf_function():
    messages = run_workers(2, {"steps": 120}, module="tests.support.custom_step_worker")
    sums = [per_rank(messages[r], "param_checksum") for r in (0, 1)]
    assert sorted(sums[0]) == list(range(10, 121, 10))
    # Different initial seeds, yet identical weights: broadcast, then averaged gradients.
    assert all(sums[0][s] == sums[1][s] for s in sums[0])
    losses = per_rank(messages[0], "loss")
    assert losses[120] < 0.5 * losses[10]
