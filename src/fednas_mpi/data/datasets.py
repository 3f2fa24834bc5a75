"""In-memory datasets: a training pool spread over clients and a server test set.

Image datasets keep their pixels as uint8 and are normalised when a client's
(or the server's) tensors are built: every MPI rank holds the whole pool, and
float32 would cost four times as much (CIFAR-10 on 9 ranks: 1.4 GB as uint8,
5.5 GB as float32). A client's 1,200 images are normalised in microseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch
from torch.nn import functional as F

from ..config import DataConfig
from ..seeding import SERVER, SETUP, numpy_rng
from .augment import CropFlip
from .errors import DataError
from .vision import SOURCES, fetch, read_source

__all__ = ["DataError", "Dataset", "load_dataset", "load_digits", "prefetch", "resize_images"]


@dataclass(frozen=True)
class Dataset:
    """A training pool (spread over clients) and the server test set.

    ``train_data``/``test_data`` are (N, C, H, W) as stored: uint8 pixels for
    image datasets, normalised with ``mean``/``std`` when model inputs are
    built, or float32 values that are already normalised (digits, synthetic
    test data). ``train_x``/``test_x`` are always model inputs.
    """

    name: str
    train_data: torch.Tensor
    train_y: torch.Tensor  # (N,) int64
    test_data: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] = ()  # per channel, of pixel values scaled to [0, 1]
    std: tuple[float, ...] = ()
    #: train-time augmentation of a normalised minibatch (data.augment), or None
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_data.shape[1:])  # type: ignore[return-value]

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Stored images as normalised float32 model inputs (float data is returned as is)."""
        if x.dtype != torch.uint8:
            return x
        mean = torch.tensor(self.mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).reshape(1, -1, 1, 1)
        return (x.to(torch.float32).div_(255.0) - mean).div_(std)

    def train_inputs(self, index: np.ndarray | slice) -> torch.Tensor:
        """Model inputs of the training-pool images ``index`` (what a client gets)."""
        return self.inputs(self.train_data[index])

    @property
    def train_x(self) -> torch.Tensor:
        """The whole training pool as model inputs; a float copy of a uint8 pool, so clients
        use ``train_inputs`` instead."""
        return self.inputs(self.train_data)

    @cached_property
    def test_x(self) -> torch.Tensor:
        """The server test set as model inputs (built once, by the rank that evaluates)."""
        return self.inputs(self.test_data)


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
    train, test = _stratified_holdout(
        y, cfg.test_fraction, numpy_rng(seed, SETUP, SERVER, "data.holdout")
    )
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    xt = torch.from_numpy(x).unsqueeze(1)
    yt = torch.from_numpy(y)
    return Dataset("digits", xt[train], yt[train], xt[test], yt[test], num_classes=10)


def resize_images(x: torch.Tensor, side: int, chunk: int = 4096) -> torch.Tensor:
    """Resize (N, C, H, W) images to side x side: bilinear with antialiasing (so shrinking
    averages instead of skipping pixels); uint8 stays uint8 (rounded).

    Works in chunks so that the float copy of a 50,000-image pool is never whole.
    """
    if x.shape[-2:] == (side, side):
        return x
    parts = []
    for i in range(0, len(x), chunk):
        part = F.interpolate(
            x[i : i + chunk].to(torch.float32),
            size=(side, side),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        if x.dtype == torch.uint8:
            part = part.round_().clamp_(0, 255).to(torch.uint8)
        parts.append(part)
    if not parts:
        return x.new_empty((0, x.shape[1], side, side))
    return torch.cat(parts)


def load_vision(cfg: DataConfig, seed: int) -> Dataset:
    """MNIST, Fashion-MNIST, CIFAR-10 or CIFAR-100 from its files.

    The server test set is the dataset's official test split (no draw, so
    ``seed`` is unused).
    """
    source = SOURCES[cfg.name]
    if cfg.download:
        prefetch(cfg)
    tx, ty, sx, sy = read_source(source, cfg.root)
    # copies: the IDX reader returns read-only views of the file's bytes
    return Dataset(
        cfg.name,
        torch.from_numpy(np.array(tx)),
        torch.from_numpy(ty),
        torch.from_numpy(np.array(sx)),
        torch.from_numpy(sy),
        num_classes=source.num_classes,
        mean=source.mean,
        std=source.std,
    )


def prefetch(cfg: DataConfig) -> None:
    """Download the dataset's files into data.root if they are missing (digits: nothing)."""
    source = SOURCES.get(cfg.name)
    if source is not None and source.locate(cfg.root) is None:
        fetch(cfg.name, cfg.root)


#: data.name -> loader; the image datasets declare their files in ``vision.SOURCES``.
LOADERS: dict[str, Callable[[DataConfig, int], Dataset]] = {
    "digits": load_digits,
    **{name: load_vision for name in SOURCES},
}


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """The configured dataset, resized and with its augmentation attached as configured.

    Raises DataError (naming the files, the root and the fetch command) when
    files are missing or corrupt.
    """
    ds = LOADERS[cfg.name](cfg, seed)
    if cfg.resize:
        ds = replace(
            ds,
            train_data=resize_images(ds.train_data, cfg.resize),
            test_data=resize_images(ds.test_data, cfg.resize),
        )
    if cfg.augment:
        # DARTS pads 32x32 CIFAR images by 4; keep that ratio for resized images.
        side = ds.input_shape[1]
        fill = tuple(-m / s for m, s in zip(ds.mean, ds.std))  # a black pixel, normalised
        ds = replace(ds, augment=CropFlip(max(1, round(4 * side / 32)), fill))
    return ds
