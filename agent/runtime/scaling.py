"""Learning-rate scaling rules applied when the global batch size changes.

``linear`` (Goyal et al. 2017: lr ∝ batch), ``sqrt`` (lr ∝ √batch, the variance-
preserving rule often better for adaptive optimisers), ``adascale`` (an AdaScale-style
gain, Johnson et al. 2020, from the gradient noise scale), or ``none``, applied by the
runtime; the workers report the resulting lr, which the control plane records.

AdaScale's gain for a batch ``B`` that is ``S`` times the base batch ``B0`` is
``r = (σ²/B0 + |G|²) / (σ²/B + |G|²)``: between 1 (no gradient noise: a bigger batch
buys nothing) and ``S`` (noise-dominated: linear scaling). With the gradient noise scale
``gns = σ²/|G|²`` this is ``(1 + gns/B0) / (1 + gns/B)``, so a change from ``B_old`` to
``B_new`` multiplies the learning rate by ``(1 + gns/B_old) / (1 + gns/B_new)`` whatever
``B0`` was. Without a noise estimate (one worker, monitor off) it falls back to ``sqrt``.
The rule names are the shared vocabulary's (``agent.protocol.vocabulary.LR_SCALING_RULES``).
"""

from __future__ import annotations

import math

from agent.protocol import vocabulary as v

RULES = v.LR_SCALING_RULES


def scaled_lr(
    lr: float, *, old_batch: int, new_batch: int, rule: str, gns: float | None = None
) -> float:
    if rule not in RULES:
        raise ValueError(f"unknown lr scaling rule {rule!r}; use one of {', '.join(RULES)}")
    if old_batch < 1 or new_batch < 1:
        raise ValueError("batch sizes must be positive")
    if rule == "adascale":
        if gns is None or not math.isfinite(gns) or gns < 0:
            rule = "sqrt"
        else:
            return lr * (1.0 + gns / old_batch) / (1.0 + gns / new_batch)
    if rule == "linear":
        return lr * new_batch / old_batch
    if rule == "sqrt":
        return lr * math.sqrt(new_batch / old_batch)
    return lr
