"""Stopping a run cleanly between rounds (preemptible SLURM partitions).

A stop is requested by SIGUSR1 to rank 0 or by creating the file ``RUN_DIR/STOP``
(what the ``jobs/`` scripts do when SLURM signals them: launchers do not all forward
signals to the ranks). Rank 0 finishes the round in progress, writes its checkpoint
(atomically, as every round), releases the workers and the command exits with
``EXIT_STOPPED``; ``fednas-mpi --resume RUN_DIR`` continues from that checkpoint.
Workers ignore SIGUSR1 so that a launcher forwarding it to every rank does not kill them.
"""

from __future__ import annotations

import signal
from pathlib import Path

STOP_FILE = "STOP"
EXIT_STOPPED = 3


class StopRequest:
    def __init__(self, run_dir: str | Path, rank: int):
        self.path = Path(run_dir) / STOP_FILE
        self.signalled = False
        try:
            if rank == 0:
                signal.signal(signal.SIGUSR1, self._on_signal)
            else:
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        except ValueError:  # not the main thread (embedded use): the file still works
            pass

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        return self.signalled or self.path.exists()
