"""Fixed-architecture models (the searched ones live in ``fednas_mpi.nas``)."""

from .cnn import SmallCNN, build_model

__all__ = ["SmallCNN", "build_model"]
