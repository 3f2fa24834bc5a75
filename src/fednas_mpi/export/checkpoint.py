"""Which checkpoint of a run ``fednas-mpi export`` reads: the round asked for, else the
newest readable one; every way of not finding it is an ExportError naming the path."""

from __future__ import annotations

from pathlib import Path

from ..store import (
    CheckpointError,
    checkpoint_path,
    newest_readable,
    no_readable_message,
    read_checkpoint,
)
from .build import ExportError


def checkpoint_to_export(run_dir: Path, round_: int | None):
    """The checkpoint of round ``round_`` of ``run_dir``, or its newest readable one."""
    if round_ is not None:
        path = checkpoint_path(run_dir, round_)
        if not path.is_file():
            raise ExportError(
                f"{path}: no such checkpoint (store.keep may have deleted it); "
                f"give another --round or none for the newest"
            )
        try:
            return read_checkpoint(path)
        except CheckpointError as e:
            raise ExportError(str(e)) from None
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    ckpt, skipped = newest_readable(run_dir)
    if ckpt is None:
        raise ExportError(no_readable_message(run_dir, skipped))
    return ckpt
