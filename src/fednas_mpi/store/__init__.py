"""Run directories and atomic per-round HDF5 checkpoints."""

from .checkpoint import (
                         Checkpoint,
                         CheckpointError,
                         StorageError,
                         checkpoint_path,
                         find_latest,
                         list_checkpoints,
                         read_checkpoint,
                         remove_temporaries,
                         write_checkpoint,
)

__all__ = ["Checkpoint", "CheckpointError", "checkpoint_path", "find_latest",
           "list_checkpoints", "read_checkpoint", "remove_temporaries", "StorageError",
           "write_checkpoint"]
