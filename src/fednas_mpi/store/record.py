"""What rank 0 records of a run: the state it carries from round to round, each round's
row of the history and its checkpoint file, what every checkpoint stores unchanged, and
``genotype.json`` at the end of a run that derives one.

The per-round metrics (module docstring of ``runtime.simulation``) are appended to the
history with NaN for rounds without them; ``checkpoint_time`` is measured after a file is
written, so it is stored from the next round's checkpoint on and is NaN for the newest
round of a file.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import mpi4py
import numpy as np
import torch
from mpi4py import MPI

from .. import __version__, kernels
from ..algorithms import GlobalModel, RoundContext
from ..config import Config, to_yaml
from ..data import Partition
from ..flat import State
from ..nas.spec import genotype_of
from .checkpoint import prune_old, write_checkpoint


def versions() -> str:
    """The versions of what produced a run (JSON), stored in every checkpoint."""
    return json.dumps(
        {
            "fednas_mpi": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "h5py": h5py.__version__,
            "mpi4py": mpi4py.__version__,
            "mpi": MPI.Get_library_version().splitlines()[0].strip(),
        }
    )


def append_clients(
    history: dict[str, np.ndarray],
    values: dict[str, dict[int, float]],
    rounds_before: int,
    num_clients: int,
) -> dict[str, np.ndarray]:
    """Add one round's row (NaN for clients not sampled) to rounds x clients arrays."""
    out = {}
    for name in set(history) | set(values):
        old = history.get(name)
        if old is None or old.shape != (rounds_before, num_clients):
            old = np.full((rounds_before, num_clients), np.nan)  # first reported now
        row = np.full((1, num_clients), np.nan)
        for c, v in values.get(name, {}).items():
            row[0, c] = v
        out[name] = np.concatenate([old, row])
    return out


@dataclass
class RunState:
    """What the server carries from round to round (and stores in every checkpoint)."""

    model: GlobalModel
    client_states: dict[int, State]
    history: dict[str, list[float]]  # metric -> one value per round
    stages: list[str]
    per_client: dict[str, np.ndarray]  # client metric -> rounds x clients
    start: int  # the first round to run
    sent: tuple | None = None  # (spec JSON, layout) the workers hold (not stored)


def fixed_record(
    cfg: Config, partition: Partition, labels: np.ndarray, world_size: int, devices: str
) -> dict:
    """What every checkpoint of this run stores unchanged: config, partition (``labels``:
    the training labels), attrs (``devices``: every rank's placement as JSON)."""
    stored = {
        "train_sizes": partition.train_sizes(),
        "eval_sizes": np.array([len(c.eval) for c in partition.clients]),
        "train_hist": partition.histograms(labels, "train"),
        "eval_hist": partition.histograms(labels, "eval"),
    }
    attrs = {
        "rounds_planned": cfg.run.rounds,
        "world_size": world_size,
        "seed": cfg.run.seed,
        "algorithm": cfg.algorithm.name,
        "dataset": cfg.data.name,
        "versions": versions(),
        "kernels": kernels.status().backend,
        "devices": devices,
    }
    return {"config_yaml": to_yaml(cfg), "partition": stored, "attrs": attrs}


def record_round(
    run_dir,
    ctx: RoundContext,
    run: RunState,
    metrics: dict[str, float],
    fixed: dict,
    early: bool,
    keep: int,
) -> None:
    """Append the round to the history and write its checkpoint, then delete all but the
    newest ``keep`` files (``store.keep``)."""
    metrics["checkpoint_time"] = float("nan")
    for name in set(run.history) | set(metrics):
        run.history.setdefault(name, [float("nan")] * len(run.stages))
        run.history[name].append(metrics.get(name, float("nan")))
    run.stages.append(ctx.stage)
    t_ckpt = time.perf_counter()
    model, r = run.model, ctx.round
    write_checkpoint(
        run_dir,
        r + 1,
        config_yaml=fixed["config_yaml"],
        spec=model.spec,
        state=model.state,
        server_state=model.server_state,
        client_states=run.client_states,
        metrics={k: np.asarray(v) for k, v in run.history.items()},
        stages=run.stages,
        partition=fixed["partition"],
        attrs={
            **fixed["attrs"],
            "stage": ctx.stage,
            **({"stopped_early": r + 1} if early else {}),
        },
        client_metrics=run.per_client,
    )
    prune_old(run_dir, keep)
    # stored from the next round's file on (a file cannot hold its own write time)
    metrics["checkpoint_time"] = run.history["checkpoint_time"][-1] = time.perf_counter() - t_ckpt


def write_genotype(run_dir, model: GlobalModel) -> None:
    """genotype.json beside the checkpoints once a run that derives one has ended
    (the caller skips it after a preemption: the run is not over)."""
    genotype = genotype_of(model.spec)
    if genotype is not None:
        (Path(run_dir) / "genotype.json").write_text(
            json.dumps(genotype.to_dict(), indent=2) + "\n"
        )
