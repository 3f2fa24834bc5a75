"""The training images a search-space network's BatchNorm is recalibrated on before export
(``deploy.recalibrate``): drawn from the seed, never from the test set."""

from __future__ import annotations

import numpy as np
import torch

from ..seeding import SERVER, SETUP, torch_rng


def calibration_batches(dataset, index: np.ndarray, samples: int, batch: int, seed: int):
    """At most ``samples`` training images in a seeded order, as near-equal batches of at
    most ``batch`` (every batch counts alike in the running averages)."""
    order = torch.randperm(
        len(index), generator=torch_rng(seed, SETUP, SERVER, "export.calibration")
    )
    chosen = np.asarray(index)[order[:samples].numpy()]
    parts = np.array_split(chosen, max(1, -(-len(chosen) // batch)))
    return [dataset.train_inputs(np.sort(p)) for p in parts if len(p)], len(chosen)
