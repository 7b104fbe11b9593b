"""Learning-rate scaling rules applied when the global batch size changes.

``linear`` (Goyal et al. 2017: lr ∝ batch), ``sqrt`` (lr ∝ √batch, the variance-
preserving rule often better for adaptive optimisers), or ``none``. Shared by the
runtime, which applies it, and the control plane, which records the new value.
"""

from __future__ import annotations

import math

RULES = ("none", "linear", "sqrt")


def scaled_lr(lr: float, *, old_batch: int, new_batch: int, rule: str) -> float:
    if rule not in RULES:
        raise ValueError(f"unknown lr scaling rule {rule!r}; use one of {', '.join(RULES)}")
    if old_batch < 1 or new_batch < 1:
        raise ValueError("batch sizes must be positive")
    if rule == "linear":
        return lr * new_batch / old_batch
    if rule == "sqrt":
        return lr * math.sqrt(new_batch / old_batch)
    return lr
