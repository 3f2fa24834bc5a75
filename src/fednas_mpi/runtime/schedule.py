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
