"""Run directories and atomic per-round HDF5 checkpoints."""

from .checkpoint import (
                         Checkpoint,
                         CheckpointError,
                         checkpoint_path,
                         find_latest,
                         list_checkpoints,
                         read_checkpoint,
                         write_checkpoint,
)

__all__ = ["Checkpoint", "CheckpointError", "checkpoint_path", "find_latest",
           "list_checkpoints", "read_checkpoint", "write_checkpoint"]
