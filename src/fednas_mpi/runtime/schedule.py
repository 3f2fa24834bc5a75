"""Which clients run in a round, and on which worker."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from ..seeding import SERVER, numpy_rng


def sample_clients(seed: int, round_: int, num_clients: int, k: int) -> list[int]:
    """K distinct client ids for a round, sorted; a function of (seed, round) only."""
    rng = numpy_rng(seed, round_, SERVER, "sample_clients")
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def assign(clients: Sequence[int], work: Sequence[float], num_workers: int) -> list[list[int]]:
    """Spread clients over workers so the largest load is small (longest-processing-time).

    Clients are placed heaviest first (ties: lower id first) on the worker with
    the least load so far (ties: lower worker index). Deterministic, and each
    worker's list is sorted by client id.
    """
    if num_workers < 1:
        raise ValueError("need at least one worker")
    order = sorted(range(len(clients)), key=lambda i: (-work[i], clients[i]))
    heap = [(0.0, w) for w in range(num_workers)]
    out: list[list[int]] = [[] for _ in range(num_workers)]
    for i in order:
        load, w = heapq.heappop(heap)
        out[w].append(int(clients[i]))
        heapq.heappush(heap, (load + float(work[i]), w))
    return [sorted(c) for c in out]


def loads(assignment: list[list[int]], work_of: np.ndarray) -> list[float]:
    return [float(sum(work_of[c] for c in cs)) for cs in assignment]


def patience_exhausted(val_acc: Sequence[float], stoppable: Sequence[bool], patience: int) -> bool:
    """Early stopping after the newest round: within the newest run of consecutive
    stoppable rounds (a method's last stage), the validations made (finite entries of
    ``val_acc``; one per round, NaN where none was made) have not beaten their best for
    ``patience`` consecutive validations. ``patience <= 0`` never stops."""
    if patience <= 0 or not stoppable or not stoppable[-1]:
        return False
    start = len(stoppable)
    while start > 0 and stoppable[start - 1]:
        start -= 1
    vals = [v for v in val_acc[start:] if np.isfinite(v)]
    if len(vals) <= patience:
        return False
    best = int(np.argmax(vals))  # the first occurrence of the best: ties do not reset
    return len(vals) - 1 - best >= patience


def eval_subset(num_test: int, size: int, purpose: str = "eval_subset") -> np.ndarray | None:
    """Indices (sorted) of a fixed server-test subset of ``size`` images - ``run.eval_subset``
    or, with ``purpose="test_subset"``, ``run.test_subset`` - the same for every run whatever
    its seed; None = the whole test set."""
    if size <= 0 or size >= num_test:
        return None
    rng = numpy_rng(0, -1, SERVER, purpose)
    return np.sort(rng.choice(num_test, size=size, replace=False))
