"""The data of a run: its dataset and the clients' partition of it, built from a config in
this one place, so that a run, ``fednas-mpi export`` and ``fednas-mpi data stats`` give every
client the same samples."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .datasets import Dataset, load_dataset
from .partition import Partition, make_partition

if TYPE_CHECKING:
    from ..config import Config


def dataset_and_partition(cfg: Config) -> tuple[Dataset, Partition]:
    """The dataset of ``cfg.data`` and the partition of its train split over
    ``cfg.partition.num_clients`` clients, both seeded by ``cfg.run.seed``.
    Raises DataError when the dataset cannot be loaded or partitioned as asked."""
    dataset = load_dataset(cfg.data, cfg.run.seed)
    partition = make_partition(
        dataset.train_y.numpy(), cfg.partition, cfg.run.seed, num_classes=dataset.num_classes
    )
    return dataset, partition
