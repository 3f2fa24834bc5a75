"""Learning-rate schedules over rounds (the Gumbel temperature's is ``nas.temperature_at``)."""

from __future__ import annotations

import math


def cosine_lr(step: int, steps: int, lr: float, lr_min: float) -> float:
    """lr at 0-based ``step`` of ``steps`` (DARTS's per-epoch cosine annealing): ``lr`` at
    step 0, ``lr_min`` at the last step."""
    if steps <= 1:
        return lr
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * step / (steps - 1)))


def prunes_after(done: int, prune_start: int, prune_every: int, warmup: int) -> bool:
    """Whether soft pruning runs after 1-based round ``done``: every ``prune_every`` rounds
    from ``prune_start`` on, never during the ``warmup`` rounds (0 = never prunes)."""
    start = max(prune_start, warmup + 1)
    return bool(prune_every) and done >= start and (done - start) % prune_every == 0
