"""Run directories and atomic per-round HDF5 checkpoints."""

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
