"""``fednas-mpi data stats|download``: look at partitions and fetch datasets (no MPI).

fednas-mpi data stats (RUN_DIR | CFG.yaml) [--png FILE] [--part train|eval] [--set k=v]
fednas-mpi data download NAME --root DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import config as config_mod
from ..config import ConfigError
from .errors import DataError

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fednas-mpi data", description="Dataset and partition tools (run without mpirun)."
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stats", help="per-client class histograms: a table and a heatmap PNG")
    s.add_argument(
        "source",
        metavar="RUN_DIR|CFG.yaml",
        help="a run directory (its newest checkpoint) or a config (partition built "
        "directly; loads the dataset)",
    )
    s.add_argument(
        "--part",
        choices=("train", "eval"),
        default="train",
        help="which split of every client (default train)",
    )
    s.add_argument(
        "--png",
        metavar="FILE",
        help="heatmap file (default RUN_DIR/partition_PART.png, or "
        "CFG-partition_PART.png in the current directory)",
    )
    s.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override one config value (with CFG.yaml)",
    )
    d = sub.add_parser("download", help="download a dataset through torchvision")
    d.add_argument("name", choices=("mnist", "fashion_mnist", "cifar10", "cifar100", "digits"))
    d.add_argument(
        "--root", required=True, metavar="DIR", help="the directory that data.root will name"
    )
    return p


def stats(args: argparse.Namespace) -> int:
    from . import stats as st

    source = Path(args.source)
    if source.is_dir():
        if args.overrides:
            raise ConfigError(["--set applies to a config file, not to a run directory"])
        hist, cfg, ckpt = st.from_run(source, args.part)
        origin = f"{ckpt}"
        png = Path(args.png) if args.png else source / f"partition_{args.part}.png"
    else:
        cfg = config_mod.load(source, args.overrides)
        hist = st.from_config(cfg, args.part)
        origin = f"{source} (partition built from the config)"
        png = Path(args.png or f"{source.stem}-partition_{args.part}.png")
    title = f"{cfg.data.name}: {st.describe(cfg)}; {args.part} split"
    print(f"{title}\nfrom {origin}\n")
    print(st.table(hist))
    st.heatmap(hist, png, title)
    print(f"\nheatmap: {png}")
    return 0


def download(args: argparse.Namespace) -> int:
    from .vision import fetch

    if args.name == "digits":
        print("digits ships with scikit-learn: nothing to download")
        return 0
    directory = fetch(args.name, args.root)
    print(f"{args.name}: files in {directory}; use data.root: {args.root}")
    return 0


def main(argv: list[str]) -> int:
    """Entry of ``fednas-mpi data ...``; returns the exit status (2 on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return {"stats": stats, "download": download}[args.command](args)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"fednas-mpi: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # stdout piped into e.g. `head`, which stopped reading: not an error of ours. Point
        # stdout at devnull so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
