"""Splits of a client's train split: MAML's support/query task pairs and the held-out part
a subnet's reward is measured on. Each draws only from the generator it is given."""

from __future__ import annotations

import torch


def task_pairs(
    n: int, batch: int, pairs: int, generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Disjoint (support, query) index batches from seeded permutations of range(n).

    pairs=0: as many disjoint pairs as one permutation holds (at least one; a client
    with fewer than 2*batch samples splits what it has in half).
    """
    size = min(batch, max(n // 2, 1))
    per_perm = max(n // (2 * size), 1)
    want = pairs or per_perm
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(out) < want:
        perm = torch.randperm(n, generator=generator)
        for p in range(min(per_perm, want - len(out))):
            s = perm[2 * p * size : (2 * p + 1) * size]
            q = perm[(2 * p + 1) * size : (2 * p + 2) * size]
            out.append((s, q if len(q) else s))
    return out


def holdout(
    n: int, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) index split of range(n); validation at least one sample and,
    with n > 1, never all of them."""
    perm = torch.randperm(n, generator=generator)
    v = min(max(1, round(fraction * n)), n - 1) if n > 1 else 1
    return (perm[v:] if n > 1 else perm), perm[:v]
