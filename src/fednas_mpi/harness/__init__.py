"""Running the ``fednas-mpi`` command from Python programs: the benchmarks in ``bench/`` and
the tests launch runs through these; a run itself never imports them.

- ``mpirun()``: which MPI launcher to start runs with;
- ``ForkCLI``: many ``python -m fednas_mpi`` commands forked from one process that has
  imported torch once;
- ``datafiles``: small dataset files in the real on-disk formats (MNIST IDX, CIFAR pickles).
"""

from .forkcli import ForkCLI
from .mpirun import mpirun

__all__ = ["ForkCLI", "mpirun"]
