"""Datasets and per-client partitions. No training code lives here."""

from .datasets import DataError, Dataset, load_dataset
from .partition import ClientSplit, Partition, make_partition

__all__ = ["DataError", "Dataset", "load_dataset", "ClientSplit", "Partition", "make_partition"]
