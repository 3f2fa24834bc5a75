"""Which MPI launcher starts a run: the one the environment names, else the one installed with
this Python (PyPI's mpich puts it beside the interpreter), else the first on ``PATH``."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def mpirun() -> str:
    """The launcher: $FEDNAS_MPI_MPIRUN, the one beside this Python (PyPI mpich), or PATH's."""
    if os.environ.get("FEDNAS_MPI_MPIRUN"):
        return os.environ["FEDNAS_MPI_MPIRUN"]
    beside = Path(sys.executable).parent / "mpirun"
    return str(beside) if beside.exists() else (shutil.which("mpirun") or "mpirun")
