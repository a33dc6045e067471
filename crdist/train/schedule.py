"""Learning-rate schedule within one phase: linear warmup, then cosine decay (or constant)."""

from __future__ import annotations

import math


def lr_at(step: int, steps: int, peak: float, warmup_fraction: float, schedule: str) -> float:
    warmup = int(warmup_fraction * steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
