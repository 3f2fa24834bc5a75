"""Spread a labelled training pool over clients: IID or Dirichlet(alpha) label skew.

Each client's share is split into a train part and an eval part that follows
the client's own label distribution (stratified), for personalised accuracy.
All draws come from the run's seed, so every rank computes the same partition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import PartitionConfig
from ..seeding import SERVER, SETUP, numpy_rng
from .datasets import DataError


@dataclass(frozen=True)
class ClientSplit:
    train: np.ndarray  # indices into the training pool
    eval: np.ndarray


@dataclass(frozen=True)
class Partition:
    clients: list[ClientSplit]
    num_classes: int

    def train_sizes(self) -> np.ndarray:
        return np.array([len(c.train) for c in self.clients], dtype=np.int64)

    def histograms(self, labels: np.ndarray, part: str = "train") -> np.ndarray:
        """(clients, classes) label counts of each client's train or eval split."""
        return np.stack([np.bincount(labels[getattr(c, part)], minlength=self.num_classes)
                         for c in self.clients])


def split_iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into ``num_clients`` near-equal shares."""
    return [np.sort(s) for s in np.array_split(rng.permutation(n), num_clients)]


def split_dirichlet(labels: np.ndarray, num_clients: int, alpha: float,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Per class, client proportions ~ Dir(alpha); the class's samples are cut accordingly."""
    shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for k, part in enumerate(np.split(idx, cuts)):
            shares[k].append(part)
    return [np.sort(np.concatenate(s)) for s in shares]


def stratified_eval_split(indices: np.ndarray, labels: np.ndarray, eval_fraction: float,
                          rng: np.random.Generator) -> ClientSplit:
    """Hold out ``eval_fraction`` of every class the client has (rounded down)."""
    if eval_fraction == 0.0 or len(indices) == 0:
        return ClientSplit(np.sort(indices).astype(np.int64), np.empty(0, dtype=np.int64))
    train, held = [], []
    for c in np.unique(labels[indices]):
        idx = rng.permutation(indices[labels[indices] == c])
        k = int(eval_fraction * len(idx))
        held.append(idx[:k])
        train.append(idx[k:])
    return ClientSplit(np.sort(np.concatenate(train)), np.sort(np.concatenate(held)))


def make_partition(labels: np.ndarray, cfg: PartitionConfig, seed: int,
                   max_tries: int = 200) -> Partition:
    labels = np.asarray(labels)
    n, m = len(labels), cfg.num_clients
    num_classes = int(labels.max()) + 1
    need = cfg.min_train * m
    if need > int(n * (1.0 - cfg.eval_fraction)):
        raise DataError(
            f"partition: {m} clients x partition.min_train={cfg.min_train} needs {need} training "
            f"samples but the pool has {n} (eval_fraction {cfg.eval_fraction}); lower "
            f"partition.num_clients or partition.min_train")
    rng = numpy_rng(seed, SETUP, SERVER, "partition")
    for _ in range(max_tries):
        if cfg.scheme == "iid":
            shares = split_iid(n, m, rng)
        else:
            shares = split_dirichlet(labels, m, cfg.alpha, rng)
        clients = [stratified_eval_split(s, labels, cfg.eval_fraction, rng) for s in shares]
        if min(len(c.train) for c in clients) >= cfg.min_train:
            return Partition(clients, num_classes)
    raise DataError(
        f"partition: no Dirichlet(alpha={cfg.alpha}) draw in {max_tries} tries gave every one of "
        f"{m} clients at least partition.min_train={cfg.min_train} training samples; raise "
        f"partition.alpha, or lower partition.min_train or partition.num_clients")
