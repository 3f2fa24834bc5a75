"""Run directories (``rundir``), atomic per-round HDF5 checkpoints (``checkpoint``) and
what rank 0 records of a run into them (``record``).

The checkpoint names are loaded on first use (PEP 562): rank 0 decides on the run
directory (``store.rundir``) before anything imports torch or h5py, which a fresh start
never needs there.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .checkpoint import (
        Checkpoint,
        CheckpointError,
        StorageError,
        checkpoint_path,
        find_latest,
        list_checkpoints,
        newest_readable,
        no_readable_message,
        read_checkpoint,
        remove_temporaries,
        write_checkpoint,
    )

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "checkpoint_path",
    "find_latest",
    "list_checkpoints",
    "newest_readable",
    "no_readable_message",
    "read_checkpoint",
    "remove_temporaries",
    "StorageError",
    "write_checkpoint",
]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".checkpoint", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
