"""``fednas-mpi configs [DIR] [--markdown]``: the shipped run configs by scale, dataset and method.

The tree is ``configs/SCALE/DATASET/METHOD[-VARIANT].yaml``; a file is a *run* when it names
its method (``algorithm.name``, possibly through ``base:``), anything else is a fragment
(``data/``, ``partition/``, ``model/``, ``SCALE/setup.yaml``) that runs layer together. Each
run's first line, a ``# `` comment, is its description here. The table of runs in
docs/data.md is ``markdown()`` of the same list, so the two cannot disagree
(tests/config/test_shipped_configs.py).

``configs/MOVED.yaml`` maps the paths of the earlier flat layout to their new files; its
reader, with the project's other compatibility rules, is ``migrations`` (``moved_to``
finds a missing path there so the CLI can name the new one).
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

from . import migrations
from .config import ConfigError, DataConfig, load, load_raw
from .migrations import MOVED_FILE, moved_to

__all__ = ["MOVED_FILE", "Run", "main", "markdown", "moved", "moved_to", "names_method", "runs"]
#: groups in the order shown: the files at the top of configs/ first, then the scales
TOP = ""
DATASETS = typing.get_args(typing.get_type_hints(DataConfig)["name"])


@dataclass(frozen=True)
class Run:
    """One runnable config file."""

    path: str  # relative to the configs directory, with forward slashes
    scale: str  # first directory (cpu, paper), or TOP for the files at the top
    dataset: str  # data.name of the resolved config
    method: str  # algorithm.name of the resolved config
    description: str  # the file's first line, without "# "


def default_dir() -> Path:
    """``configs`` in the current directory, else the one of the repository this package is in."""
    here = Path("configs")
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "configs"


def names_method(path: Path) -> bool:
    """Whether the file (with its ``base:`` files) names a method, i.e. is a run."""
    raw = load_raw(path)
    algorithm = raw.get("algorithm") if isinstance(raw, dict) else None
    return isinstance(algorithm, dict) and bool(algorithm.get("name"))


def description(path: Path) -> str:
    first = path.read_text().splitlines()[:1]
    return first[0][2:].strip() if first and first[0].startswith("# ") else ""


def runs(root: Path | None = None) -> list[Run]:
    """Every run config under ``root``, top-level files first, then by scale, dataset, name."""
    root = default_dir() if root is None else Path(root)
    found = []
    for path in root.rglob("*.yaml"):
        rel = path.relative_to(root)
        if rel.as_posix() == MOVED_FILE or not names_method(path):
            continue
        cfg = load(path)
        scale = rel.parts[0] if len(rel.parts) > 1 else TOP
        found.append(
            Run(rel.as_posix(), scale, cfg.data.name, cfg.algorithm.name, description(path))
        )
    order = {d: i for i, d in enumerate(DATASETS)}
    return sorted(found, key=lambda r: (r.scale != TOP, r.scale, order.get(r.dataset, 99), r.path))


def moved(root: Path | None = None) -> dict[str, str]:
    """Old path -> new path, both relative to ``root`` (default: ``default_dir()``), from
    ``root/MOVED.yaml`` (read by ``migrations.moved``)."""
    return migrations.moved(default_dir() if root is None else Path(root))


def markdown(root: Path | None = None) -> str:
    """The table of runs as it appears in docs/data.md (paths relative to the repository)."""
    lines = ["| config | scale | dataset | method | description |", "|---|---|---|---|---|"]
    for r in runs(root):
        lines.append(
            f"| `configs/{r.path}` | {r.scale or '-'} | {r.dataset} | {r.method} | "
            f"{r.description} |"
        )
    return "\n".join(lines)


def text(root: Path | None = None) -> str:
    """The listing ``fednas-mpi configs`` prints: one block per scale/dataset."""
    root = default_dir() if root is None else Path(root)
    found = runs(root)
    width = max(len(str(root / r.path)) for r in found)
    out, group = [], None
    for r in found:
        here = f"{r.scale}/{r.dataset}" if r.scale != TOP else "start here"
        if here != group:
            out.append(("\n" if out else "") + here)
            group = here
        out.append(f"  {str(root / r.path):<{width}}  {r.method:<16}  {r.description}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="fednas-mpi configs",
        description="List the run configs (configs/SCALE/DATASET/METHOD.yaml) with one line "
        "each; run one with mpirun -n N fednas-mpi PATH.",
    )
    p.add_argument(
        "dir",
        nargs="?",
        type=Path,
        help="the configs directory (default ./configs, else the repository's)",
    )
    p.add_argument(
        "--markdown", action="store_true", help="print the table of docs/data.md instead"
    )
    a = p.parse_args(argv)
    root = a.dir if a.dir is not None else default_dir()
    try:
        print(markdown(root) if a.markdown else text(root))
    except ConfigError as e:
        print(f"fednas-mpi configs: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    print(markdown())
