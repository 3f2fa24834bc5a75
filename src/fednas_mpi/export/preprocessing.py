"""What a raw image must go through to become an exported model's input: written into the
exported file's description so that the file is usable without fednas-mpi."""

from __future__ import annotations

import numpy as np

from ..seeding import SERVER, SETUP, numpy_rng


def preprocessing(cfg, dataset) -> dict:
    """What a raw image must go through to become the model's input."""
    c, h, w = dataset.input_shape
    out: dict = {"input_shape": [c, h, w], "dtype": "float32", "layout": "NCHW"}
    if cfg.data.name == "digits":
        from sklearn.datasets import load_digits

        from ..data.datasets import _stratified_holdout

        bunch = load_digits()
        x = bunch.images.astype(np.float32) / 16.0
        train, _ = _stratified_holdout(
            bunch.target,
            cfg.data.test_fraction,
            numpy_rng(cfg.run.seed, SETUP, SERVER, "data.holdout"),
        )
        out.update(
            source="scikit-learn digits: 8x8 pixel values 0..16",
            scale=1 / 16,
            mean=[float(x[train].mean())],
            std=[float(x[train].std())],
        )
    else:
        out.update(
            source=f"{cfg.data.name}: uint8 pixels 0..255",
            scale=1 / 255,
            mean=list(dataset.mean),
            std=list(dataset.std),
        )
    if cfg.data.resize:
        out["resize"] = f"{cfg.data.resize}x{cfg.data.resize}, bilinear with antialiasing"
    out["formula"] = "x = (pixels * scale - mean[c]) / std[c]"
    return out
