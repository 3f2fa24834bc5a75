"""Spread a labelled training pool over clients: IID, Dirichlet(alpha) or label skew (tau).

Two modes. With ``partition.train_size = 0`` the whole pool is spread over
the clients and each client's share is split into train and eval parts that
follow its own label distribution (stratified, ``eval_fraction``). With fixed
sizes (the paper: 600 train + 600 eval per client) every client draws exactly
``train_size + eval_size`` images by its own label proportions, disjoint from
the other clients' or (``overlap``) independently from the whole pool, and
its eval part has the same label proportions as its train part.

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
        return np.stack(
            [
                np.bincount(labels[getattr(c, part)], minlength=self.num_classes)
                for c in self.clients
            ]
        )


def split_iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into ``num_clients`` near-equal shares."""
    return [np.sort(s) for s in np.array_split(rng.permutation(n), num_clients)]


def split_dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per class, client proportions ~ Dir(alpha); the class's samples are cut accordingly."""
    shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for k, part in enumerate(np.split(idx, cuts)):
            shares[k].append(part)
    return [np.sort(np.concatenate(s)) for s in shares]


def stratified_eval_split(
    indices: np.ndarray, labels: np.ndarray, eval_fraction: float, rng: np.random.Generator
) -> ClientSplit:
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


def choose_classes(
    num_clients: int, tau: int, num_classes: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """``tau`` distinct classes per client, every class used by about as many clients.

    Each client takes the ``tau`` classes used least so far, ties broken at
    random, so class usage never differs by more than one between classes.
    """
    usage = np.zeros(num_classes, dtype=np.int64)
    out = []
    for _ in range(num_clients):
        key = usage + rng.random(num_classes)  # least used first; random among equals
        chosen = np.sort(np.argsort(key, kind="stable")[:tau])
        usage[chosen] += 1
        out.append(chosen)
    return out


def split_label_skew(
    labels: np.ndarray, num_clients: int, tau: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Whole pool: each class is cut into equal shares among the clients holding it.

    Classes no client holds (when clients x tau < classes) are left out.
    """
    num_classes = int(labels.max()) + 1
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for k, classes in enumerate(choose_classes(num_clients, tau, num_classes, rng)):
        for c in classes:
            holders[c].append(k)
    shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        if holders[c]:
            idx = rng.permutation(np.flatnonzero(labels == c))
            for k, part in zip(holders[c], np.array_split(idx, len(holders[c]))):
                shares[k].append(part)
    return [np.sort(np.concatenate(s)) if s else np.empty(0, dtype=np.int64) for s in shares]


def apportion(p: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` in proportions ``p`` (largest remainder)."""
    raw = np.asarray(p, dtype=np.float64) / np.sum(p) * total
    counts = np.floor(raw).astype(np.int64)
    rest = total - int(counts.sum())
    if rest > 0:
        counts[np.argsort(-(raw - counts), kind="stable")[:rest]] += 1
    while counts.sum() > total:  # float rounding only: take back from the largest
        counts[np.argmax(counts)] -= 1
    return counts


def draw_counts(p: np.ndarray, need: int, left: np.ndarray) -> np.ndarray:
    """Per-class counts summing to ``need`` in proportions ``p``, at most ``left`` per class.

    A class that runs out is dropped and the rest of the request is spread over
    the client's other classes by their proportions (over the classes with
    images left, by availability, if none of the client's classes has any).
    """
    counts = np.zeros_like(left)
    left = left.copy()
    while need > 0:
        q = np.where(left > 0, p, 0.0)
        if q.sum() <= 0:
            q = left.astype(np.float64)
        take = np.minimum(apportion(q, need), left)
        counts += take
        left -= take
        need -= int(take.sum())
    return counts


def _client_proportions(
    cfg: PartitionConfig, pool_counts: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    m, num_classes = cfg.num_clients, len(pool_counts)
    if cfg.scheme == "iid":
        return [pool_counts / pool_counts.sum()] * m
    if cfg.scheme == "dirichlet":
        props = []
        for _ in range(m):
            p = np.nan_to_num(rng.dirichlet(np.full(num_classes, cfg.alpha)))
            if p.sum() <= 0:  # every gamma draw underflowed (alpha ~ 1e-3 or less)
                p[rng.integers(num_classes)] = 1.0
            props.append(p)
        return props
    props = []
    for classes in choose_classes(m, cfg.tau, num_classes, rng):
        p = np.zeros(num_classes)
        p[classes] = 1.0 / cfg.tau
        props.append(p)
    return props


def _label_skew_shortfall(
    cfg: PartitionConfig, wanted: np.ndarray, pool_counts: np.ndarray
) -> None:
    """Label skew never swaps a client's classes, so running out of a class is an error."""
    short = np.flatnonzero(wanted > pool_counts)
    if len(short):
        c = int(short[0])
        how = "one client" if cfg.overlap else "the clients holding it together"
        raise DataError(
            f"partition: label_skew with partition.tau={cfg.tau} asks for {int(wanted[c])} "
            f"images of class {c} from {how}, but the training pool holds "
            f"{int(pool_counts[c])}; lower partition.train_size / partition.eval_size"
            + (
                ""
                if cfg.overlap
                else " or partition.num_clients, or set "
                "partition.overlap: true (clients may then share images)"
            )
            + ", or raise partition.tau"
        )


def fixed_size_partition(
    labels: np.ndarray, cfg: PartitionConfig, num_classes: int, rng: np.random.Generator
) -> list[ClientSplit]:
    """Exactly train_size + eval_size images per client, by the client's label proportions.

    IID clients follow the pool's label mix, Dirichlet clients draw their mix
    from Dir(alpha), label-skew clients split evenly over ``tau`` classes. The
    eval part takes the same share of every class as the client has overall.
    """
    size = cfg.train_size + cfg.eval_size
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    pool_counts = np.array([len(q) for q in pools], dtype=np.int64)
    props = _client_proportions(cfg, pool_counts, rng)
    if cfg.scheme == "label_skew":
        counts = []
        for p in props:
            classes = np.flatnonzero(p)
            cnt = np.zeros(num_classes, dtype=np.int64)
            cnt[classes] = size // len(classes)
            # the size % tau classes that get one image more are drawn at random
            cnt[rng.choice(classes, size % len(classes), replace=False)] += 1
            counts.append(cnt)
        wanted = np.max(counts, axis=0) if cfg.overlap else np.sum(counts, axis=0)
        _label_skew_shortfall(cfg, wanted, pool_counts)
    else:
        left = pool_counts.copy()
        counts = []
        for p in props:
            cnt = draw_counts(p, size, pool_counts if cfg.overlap else left)
            if not cfg.overlap:
                left -= cnt
            counts.append(cnt)
    used = np.zeros(num_classes, dtype=np.int64)
    clients = []
    for cnt in counts:
        n_eval = apportion(cnt, cfg.eval_size) if cfg.eval_size else np.zeros_like(cnt)
        train, held = [], []
        for c in np.flatnonzero(cnt):
            if cfg.overlap:
                mine = pools[c][rng.permutation(len(pools[c]))[: cnt[c]]]
            else:
                mine = pools[c][used[c] : used[c] + cnt[c]]
                used[c] += cnt[c]
            held.append(mine[: n_eval[c]])
            train.append(mine[n_eval[c] :])
        clients.append(
            ClientSplit(
                np.sort(np.concatenate(train)).astype(np.int64),
                np.sort(np.concatenate(held)).astype(np.int64),
            )
        )
    return clients


def _check_request(cfg: PartitionConfig, n: int, num_classes: int) -> None:
    """Requests no draw can satisfy, each as one error naming the fields."""
    m = cfg.num_clients
    if cfg.scheme == "dirichlet" and not cfg.alpha > 0:
        raise DataError(
            f"partition.alpha = {cfg.alpha}: the Dirichlet concentration must be "
            f"> 0 (smaller = more skewed; the paper uses 0.3 and 0.1)"
        )
    if cfg.scheme == "label_skew" and not 1 <= cfg.tau <= num_classes:
        raise DataError(
            f"partition.tau = {cfg.tau}: each client holds tau classes, and the "
            f"dataset has {num_classes}; use a value in [1, {num_classes}]"
        )
    size = cfg.train_size + cfg.eval_size
    if cfg.train_size == 0:
        need = cfg.min_train * m
        if need > int(n * (1.0 - cfg.eval_fraction)):
            raise DataError(
                f"partition: {m} clients x partition.min_train={cfg.min_train} needs {need} "
                f"training samples but the pool has {n} (eval_fraction {cfg.eval_fraction}); "
                f"lower partition.num_clients or partition.min_train"
            )
    elif cfg.overlap and size > n:
        raise DataError(
            f"partition: partition.train_size={cfg.train_size} + partition.eval_size="
            f"{cfg.eval_size} = {size} images per client, but the training pool holds {n}; "
            f"lower partition.train_size or partition.eval_size"
        )
    elif not cfg.overlap and m * size > n:
        raise DataError(
            f"partition: {m} clients (partition.num_clients) x (partition.train_size="
            f"{cfg.train_size} + partition.eval_size={cfg.eval_size}) = {m * size} images, but "
            f"the training pool holds {n}; lower partition.num_clients, partition.train_size "
            f"or partition.eval_size, or set partition.overlap: true (clients may then share "
            f"images)"
        )


def make_partition(
    labels: np.ndarray,
    cfg: PartitionConfig,
    seed: int,
    max_tries: int = 200,
    num_classes: int | None = None,
) -> Partition:
    """Spread the pool with ``labels`` over ``cfg.num_clients`` clients (see the module doc).

    ``num_classes`` (the dataset's) defaults to the largest label + 1. Raises
    DataError, naming the fields, for a request no draw can satisfy.
    """
    labels = np.asarray(labels)
    n, m = len(labels), cfg.num_clients
    num_classes = num_classes or int(labels.max()) + 1
    _check_request(cfg, n, num_classes)
    rng = numpy_rng(seed, SETUP, SERVER, "partition")
    if cfg.train_size > 0:
        return Partition(fixed_size_partition(labels, cfg, num_classes, rng), num_classes)
    for _ in range(max_tries):
        if cfg.scheme == "iid":
            shares = split_iid(n, m, rng)
        elif cfg.scheme == "dirichlet":
            shares = split_dirichlet(labels, m, cfg.alpha, rng)
        else:
            shares = split_label_skew(labels, m, cfg.tau, rng)
        clients = [stratified_eval_split(s, labels, cfg.eval_fraction, rng) for s in shares]
        if min(len(c.train) for c in clients) >= cfg.min_train:
            return Partition(clients, num_classes)
    what, knob = {
        "dirichlet": (f"Dirichlet(alpha={cfg.alpha})", "raise partition.alpha"),
        "label_skew": (f"label_skew (tau={cfg.tau})", "raise partition.tau"),
    }.get(cfg.scheme, ("iid", "use fixed partition.train_size"))
    raise DataError(
        f"partition: no {what} draw in {max_tries} tries gave every one of "
        f"{m} clients at least partition.min_train={cfg.min_train} training samples; {knob}, "
        f"or lower partition.min_train or partition.num_clients"
    )
