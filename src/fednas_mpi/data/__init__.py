"""Datasets and per-client partitions. No training code lives here."""

from .datasets import DataError, Dataset, load_dataset, prefetch
from .federated import dataset_and_partition
from .partition import ClientSplit, Partition, make_partition

__all__ = [
    "DataError",
    "Dataset",
    "load_dataset",
    "prefetch",
    "ClientSplit",
    "Partition",
    "make_partition",
    "dataset_and_partition",
]
