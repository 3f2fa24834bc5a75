"""Live watching in TensorBoard (``store.tensorboard: true``): rank 0 mirrors each round.

Called after each round's checkpoint is written (the ``on_round`` callback the CLI hands
to ``Simulation.serve``): every finite per-round metric becomes a scalar at step = the
round number (1-based), grouped as ``time/`` (the time components), ``arch/`` (the
architecture's state: surviving ops, entropies, temperature, accuracy around pruning) and
``metrics/`` (accuracies, losses, the rest); the stage and the genotype become text when
they change (the genotype is read from the checkpoint just written). The HDF5 checkpoints
stay the source of truth: a resumed run drops the events after its checkpoint
(``purge_step``) and writes them again.

    tensorboard --logdir RUN_DIR/tensorboard
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py

from ..nas.spec import genotype_of
from ..store import checkpoint_path

SUBDIR = "tensorboard"
ARCH = (
    "ops_alive",
    "combos_alive",
    "temperature",
    "acc_before_prune",
    "acc_after_prune",
    "distinct_subnets",
)


class TensorBoardUnavailable(RuntimeError):
    """The tensorboard package is missing."""


def tag(name: str) -> str:
    """The TensorBoard tag of a metric."""
    if name.endswith("_time"):
        return f"time/{name}"
    if name in ARCH or name.startswith("arch_"):
        return f"arch/{name}"
    return f"metrics/{name}"


def _writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TensorBoardUnavailable(
            "store.tensorboard is true but the tensorboard package is not installed: "
            "pip install 'fednas-mpi[tensorboard]' (or set store.tensorboard: false)"
        ) from None
    return SummaryWriter


def check_available() -> None:
    """Raise TensorBoardUnavailable before a run starts rather than after round 1."""
    _writer_class()


class TensorBoardLog:
    """A ``SummaryWriter`` on RUN_DIR/tensorboard fed one round at a time."""

    def __init__(self, run_dir: str | Path, start_round: int = 0):
        self.run_dir = Path(run_dir)
        self.logdir = self.run_dir / SUBDIR
        self.writer = _writer_class()(str(self.logdir), purge_step=start_round + 1)
        self.genotype: str | None = None
        self.stage: str | None = None

    def __call__(self, round_index: int, metrics: dict) -> None:
        step = round_index + 1
        for name, value in sorted(metrics.items()):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(tag(name), float(value), step)
        spec = self._spec(step)
        stage = (
            metrics.get("stage") if isinstance(metrics.get("stage"), str) else spec.get("_stage")
        )
        if stage and stage != self.stage:
            self.writer.add_text("stage", str(stage), step)
            self.stage = stage
        genotype = g.text if (g := genotype_of(spec)) is not None else None
        if genotype and genotype != self.genotype:
            # Markdown: one line per cell type, kept as written
            self.writer.add_text(
                "genotype", "\n\n".join(f"`{line}`" for line in genotype.splitlines()), step
            )
            self.genotype = genotype
        self.writer.flush()

    def _spec(self, step: int) -> dict:
        """The spec (and stage) of the checkpoint of round ``step``; {} if unreadable."""
        try:
            with h5py.File(checkpoint_path(self.run_dir, step), "r", locking=False) as f:
                spec = json.loads(f.attrs["spec"])
                spec["_stage"] = str(f.attrs.get("stage", ""))
                return spec
        except (OSError, KeyError, ValueError):
            return {}  # e.g. deleted at once by store.keep: the scalars are still logged

    def close(self) -> None:
        self.writer.close()
