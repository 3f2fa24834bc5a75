"""In-memory datasets: a training pool spread over clients and a server test set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import DataConfig
from ..seeding import SERVER, SETUP, numpy_rng


class DataError(ValueError):
    """Missing, corrupt or unusable data; the message names the files and the fix."""


@dataclass(frozen=True)
class Dataset:
    name: str
    train_x: torch.Tensor  # (N, C, H, W) float32, normalised
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


def _stratified_holdout(y: np.ndarray, fraction: float, rng: np.random.Generator):
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test.append(idx[: max(1, int(round(fraction * len(idx))))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(y)), test)
    return train, test


def load_digits(cfg: DataConfig, seed: int) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images); no download.

    Digits has no test split, so a per-class fraction (``data.test_fraction``)
    drawn from the run's seed becomes the server test set.
    """
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    x = bunch.images.astype(np.float32) / 16.0  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    train, test = _stratified_holdout(y, cfg.test_fraction,
                                      numpy_rng(seed, SETUP, SERVER, "data.holdout"))
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    xt = torch.from_numpy(x).unsqueeze(1)
    yt = torch.from_numpy(y)
    return Dataset("digits", xt[train], yt[train], xt[test], yt[test], num_classes=10)


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    loaders = {"digits": load_digits}
    return loaders[cfg.name](cfg, seed)
