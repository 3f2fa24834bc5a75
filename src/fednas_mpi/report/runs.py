"""Reading a run for the report tools: the newest complete checkpoint of a run directory.

Checkpoints are immutable once renamed into place (the writer uses a hidden temporary
name, then renames), so reading the newest ``round_NNNNN.h5`` is safe while the run
is still going: temporary files are never opened and no lock is taken. The newest
checkpoint holds the whole history of the run (every round's metrics).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import yaml

from .. import config as config_mod
from ..config import Config, ConfigError
from ..migrations import stored
from ..store import CheckpointError, newest_readable, no_readable_message, read_checkpoint

_TEMP = re.compile(r"^\.round_\d{5,}\.h5\.tmp-\d+$")
#: Config keys that do not change what a run computes, besides the seed: runs that differ
#: only in these (and ``run.seed``) belong to one setting.
NOT_A_SETTING = ("run.seed", "run.name", "runtime.", "store.")


class ReportError(Exception):
    """Input the report tools cannot use; the message names the file and the fix."""


@dataclass
class Run:
    """What the tools need of one run, read from its newest complete checkpoint."""

    directory: Path
    checkpoint: Path
    round: int
    rounds_planned: int
    attrs: dict
    config: dict  # the resolved config, nested
    spec: dict
    metrics: dict[str, np.ndarray]
    stages: list[str]
    client_metrics: dict[str, np.ndarray] = field(default_factory=dict)
    partition: dict[str, np.ndarray] = field(default_factory=dict)
    writing: list[str] = field(default_factory=list)  # temporary files of a round in progress
    skipped: list[str] = field(default_factory=list)  # newer files that did not read back
    #: per client, its own subnet (cell type -> op per edge) where the method keeps one
    #: in its client state (PerFedRLNAS and its meta variant)
    client_subnets: dict[int, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def method(self) -> str:
        return str(self.attrs.get("algorithm") or self.config.get("algorithm", {}).get("name"))

    @property
    def dataset(self) -> str:
        return str(self.attrs.get("dataset") or self.config.get("data", {}).get("name"))

    @property
    def seed(self) -> int:
        return int(self.attrs.get("seed", self.config.get("run", {}).get("seed", 0)))

    @property
    def complete(self) -> bool:
        """All planned rounds done, or stopped early by run.patience."""
        return self.round >= self.rounds_planned or bool(self.attrs.get("stopped_early"))

    def metric(self, name: str) -> np.ndarray:
        """Per-round values of a metric (NaN where not measured or not stored)."""
        values = self.metrics.get(name)
        if values is None:
            return np.full(self.round, np.nan)
        return np.asarray(values, dtype=np.float64)

    def typed_config(self) -> Config | None:
        """The config as dataclasses, or None if this fednas-mpi no longer accepts it."""
        try:
            return config_mod.from_dict(self.config)
        except ConfigError:
            return None

    def setting(self) -> dict[str, object]:
        """The flattened config without the seed and the fields that do not change results."""
        flat = config_mod.flatten(self.config)
        return {
            k: v
            for k, v in flat.items()
            if not any(k == p or (p.endswith(".") and k.startswith(p)) for p in NOT_A_SETTING)
        }


def temp_files(directory: Path) -> list[str]:
    """Names of checkpoints being written (hidden temporary files)."""
    try:
        return sorted(p.name for p in directory.iterdir() if _TEMP.match(p.name))
    except OSError:
        return []


def _no_checkpoint(directory: Path) -> ReportError:
    writing = temp_files(directory)
    if writing:
        return ReportError(
            f"{directory}: no complete checkpoint yet; round 1 is being written "
            f"({writing[0]}); try again once round_00001.h5 appears"
        )
    try:
        entries = sorted(p.name for p in directory.iterdir())
    except OSError as e:
        return ReportError(f"{directory}: cannot list the directory ({e.strerror})")
    if "config.yaml" in entries:
        return ReportError(
            f"{directory}: no checkpoint yet (round_00001.h5 is written when the "
            f"run finishes its first round); try again then"
        )
    if not entries:
        return ReportError(
            f"{directory}: empty directory, not a fednas-mpi run (no "
            f"round_NNNNN.h5); give the --out directory of a run"
        )
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    return ReportError(
        f"{directory}: no checkpoint round_NNNNN.h5 (holds {shown}); give the "
        f"--out directory of a run"
    )


def _read(path: Path, directory: Path) -> Run:
    try:
        return _read_run(path, directory)
    except (yaml.YAMLError, TypeError) as e:  # a config attribute that is no YAML mapping
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None


def _read_run(path: Path, directory: Path) -> Run:
    ck = read_checkpoint(path, tensors=False)
    with h5py.File(path, "r", locking=False) as f:
        partition = (
            {k: np.asarray(v[()]) for k, v in f["partition"].items()} if "partition" in f else {}
        )
        subnets = {
            int(c): {
                cell: np.asarray(g[f"subnet_{cell}"][()]).astype(int).tolist()
                for cell in ("normal", "reduce")
            }
            for c, g in (f["clients"].items() if "clients" in f else [])
            if "subnet_normal" in g and "subnet_reduce" in g
        }
    config = yaml.safe_load(ck.config_yaml) or {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its config attribute is not a YAML mapping")
    config = stored(config, path)  # an older run's config in today's shape
    prims = config.get("model", {}).get("darts", {}).get("primitives", [])
    client_subnets = {
        c: {
            cell: [prims[k] if 0 <= k < len(prims) else str(k) for k in ops]
            for cell, ops in sn.items()
        }
        for c, sn in sorted(subnets.items())
    }
    planned = ck.attrs.get("rounds_planned", config.get("run", {}).get("rounds", ck.round))
    return Run(
        directory=directory,
        checkpoint=path,
        round=ck.round,
        rounds_planned=int(planned),
        attrs=ck.attrs,
        config=config,
        spec=ck.spec,
        metrics=ck.metrics,
        stages=ck.stages,
        client_metrics=ck.client_metrics,
        partition=partition,
        client_subnets=client_subnets,
    )


def load_run(source: str | Path) -> Run:
    """A run from its directory (its newest checkpoint that reads back, by the store's one
    policy: ``store.newest_readable``; each newer file passed over is a warning on stderr
    and in ``Run.skipped``) or from one checkpoint file.

    Raises ReportError naming the directory or the file that cannot be used.
    """
    source = Path(source)
    if not source.exists():
        raise ReportError(f"{source}: no such file or directory; give a run directory")
    if source.is_file():
        try:
            run = _read(source, source.parent)
        except (CheckpointError, OSError, KeyError, ValueError) as e:
            text = (
                str(e)
                if str(e).startswith(str(source))
                else f"{source}: unreadable checkpoint ({e})"
            )
            raise ReportError(f"{text}; give a fednas-mpi checkpoint or run directory") from None
        run.writing = temp_files(source.parent)
        return run
    run, skipped = newest_readable(source, lambda path: _read(path, source))
    if run is None:
        if not skipped:
            raise _no_checkpoint(source)
        raise ReportError(no_readable_message(source, skipped))
    for note in skipped:
        print(f"fednas-mpi: warning: {note}; reading {run.checkpoint.name}", file=sys.stderr)
    run.skipped = skipped
    run.writing = temp_files(source)
    return run


def load_runs(sources: list[str]) -> list[Run]:
    """Several runs; the first that cannot be read raises ReportError."""
    return [load_run(s) for s in sources]


def finite_last(values: np.ndarray) -> tuple[float, int]:
    """(last finite value, its 1-based round), or (nan, 0) if there is none."""
    idx = np.flatnonzero(np.isfinite(values))
    return (float(values[idx[-1]]), int(idx[-1]) + 1) if idx.size else (float("nan"), 0)


def finite_best(values: np.ndarray) -> tuple[float, int]:
    """(largest finite value, its first 1-based round), or (nan, 0)."""
    if not np.isfinite(values).any():
        return float("nan"), 0
    i = int(np.nanargmax(values))
    return float(values[i]), i + 1


def time_per_stage(run: Run) -> dict[str, float]:
    """Sum of round times per stage, in the order stages first appear."""
    out: dict[str, float] = {}
    for stage, t in zip(run.stages, run.metric("round_time")):
        if np.isfinite(t):
            out[stage] = out.get(stage, 0.0) + float(t)
    return out


# ------------------------------------------------------------------ settings


@dataclass
class Setting:
    """Runs whose configs agree in everything but the seed (and execution-only fields)."""

    runs: list[Run]
    label: str = ""

    @property
    def method(self) -> str:
        return self.runs[0].method

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def title(self) -> str:
        return f"{self.method} ({self.label})" if self.label else self.method


def _key(run: Run) -> str:
    return yaml.safe_dump(run.setting(), sort_keys=True)


def group_settings(runs: list[Run], max_label: int = 48) -> tuple[list[Setting], list[str]]:
    """Group runs into settings (first-appearance order) and label each by what tells it
    apart: the config keys that differ between settings of the same method, and data,
    partition, federation and round-count keys that differ anywhere. Long labels become
    S1, S2, ... and the second value lists what they stand for."""
    groups: dict[str, Setting] = {}
    for run in runs:
        groups.setdefault(_key(run), Setting([])).runs.append(run)
    settings = list(groups.values())
    flats = [s.runs[0].setting() for s in settings]
    keys = sorted({k for f in flats for k in f})
    shown = []
    for k in keys:
        if k == "algorithm.name":
            continue
        values = [repr(f.get(k)) for f in flats]
        if len(set(values)) == 1:
            continue
        shared = k.split(".")[0] in ("data", "partition", "federation", "run")
        same_method_differs = any(
            a.method == b.method and va != vb
            for a, va in zip(settings, values)
            for b, vb in zip(settings, values)
        )
        if shared or same_method_differs:
            shown.append(k)
    # a key another method reads is not part of this run's label (its config has none)
    labels = [
        ", ".join(
            f"{k.split('.', 1)[1] if k.count('.') > 1 else k}={_value(f.get(k))}"
            for k in shown
            if k in f
        )
        for f in flats
    ]
    legend = []
    if any(len(label) > max_label for label in labels):
        legend = [f"S{i + 1}: {label}" for i, label in enumerate(labels)]
        labels = [f"S{i + 1}" for i in range(len(labels))]
    for s, label in zip(settings, labels):
        s.label = label
    return settings, legend


def _value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)
