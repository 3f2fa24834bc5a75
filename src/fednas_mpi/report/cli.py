"""``fednas-mpi inspect|compare|plot``: look at runs from their checkpoints (no MPI).

fednas-mpi inspect RUN_DIR [--rounds] [--clients] [--json | --csv]
fednas-mpi compare RUN_DIR... [--csv] [--target ACC]
fednas-mpi plot RUN_DIR... [--out DIR] [--metric NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .runs import ReportError, load_run, load_runs

EXIT_BAD_INPUT = 2


def _accuracy(text: str) -> float:
    v = float(text)
    v = v / 100 if v > 1 else v
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{text}: give an accuracy in (0, 1] or in percent")
    return v


def build_parser(command: str) -> argparse.ArgumentParser:
    prog = f"fednas-mpi {command}"
    if command == "inspect":
        p = argparse.ArgumentParser(
            prog=prog,
            description="Summary of one run from its newest complete checkpoint "
            "(works while the run is still being written).",
        )
        p.add_argument("run", metavar="RUN_DIR", help="run directory (or one round_NNNNN.h5)")
        p.add_argument("--rounds", action="store_true", help="also print the per-round table")
        p.add_argument("--clients", action="store_true", help="also print the per-client table")
        out = p.add_mutually_exclusive_group()
        out.add_argument(
            "--json",
            action="store_true",
            help="print summary, rounds and clients as one JSON document",
        )
        out.add_argument(
            "--csv",
            action="store_true",
            help="print CSV: the per-round table with --rounds, the per-client "
            "table with --clients, else the summary as one row",
        )
        return p
    if command == "compare":
        p = argparse.ArgumentParser(
            prog=prog,
            description="Settings side by side (paper Table 2): runs whose configs "
            "differ only in run.seed form one setting; mean ± std over "
            "its seeds.",
        )
        p.add_argument("runs", nargs="+", metavar="RUN_DIR")
        p.add_argument("--csv", action="store_true", help="CSV instead of a Markdown table")
        p.add_argument(
            "--target",
            type=_accuracy,
            metavar="ACC",
            help="also report the time until the global accuracy first reaches ACC (0.9 or 90)",
        )
        return p
    p = argparse.ArgumentParser(
        prog=prog,
        description="PNG figures: accuracy vs round and vs time (mean ± std band "
        "over seeds), temperature and architecture entropy, time per "
        "round, partition heatmaps, genotype cells.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="directory for the PNGs (default RUN_DIR/plots for one run, ./plots for several)",
    )
    p.add_argument(
        "--metric",
        default="global_acc",
        help="the accuracy of accuracy.png: global_acc (server test set, default), val_acc "
        "(the clients' eval splits) or personal_acc (mean local accuracy of the "
        "personalised models, Table 5; recorded on run.personal_eval_every rounds)",
    )
    return p


def inspect(args: argparse.Namespace) -> int:
    from . import summary as sm

    run = load_run(args.run)
    if args.json:
        print(sm.as_json(run))
        return 0
    if args.csv:
        if args.rounds and args.clients:
            raise ReportError("--csv prints one table: give --rounds or --clients, not both")
        rows = (
            sm.rounds(run)
            if args.rounds
            else sm.clients(run)
            if args.clients
            else [sm.summary_row(sm.summary(run))]
        )
        sys.stdout.write(sm.to_csv(rows))
        return 0
    print(sm.summary_text(sm.summary(run)))
    if args.rounds:
        print(f"\nper round ({run.checkpoint.name}):\n{sm.table(sm.rounds(run))}")
    if args.clients:
        note = (
            ""
            if run.client_metrics
            else " (per-client metrics not stored: a run from an older fednas-mpi)"
        )
        print(f"\nper client{note}:\n{sm.table(sm.clients(run))}")
    return 0


def compare(args: argparse.Namespace) -> int:
    from .compare import compare as table

    text = table(load_runs(args.runs), "csv" if args.csv else "markdown", args.target)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def plot(args: argparse.Namespace) -> int:
    from .plots import plot_all

    runs = load_runs(args.runs)
    out = (
        Path(args.out)
        if args.out
        else (runs[0].directory / "plots" if len(runs) == 1 else Path("plots"))
    )
    try:
        written, notes = plot_all(runs, out, args.metric)
    except OSError as e:
        raise ReportError(
            f"{out}: cannot write the figures ({e.strerror}); choose a writable --out"
        ) from None
    for note in notes:
        print(f"note: {note}")
    for path in written:
        print(path)
    return 0


def main(argv: list[str]) -> int:
    """Entry of ``fednas-mpi inspect|compare|plot ...``; returns the exit status."""
    command, rest = argv[0], argv[1:]
    args = build_parser(command).parse_args(rest)
    try:
        return {"inspect": inspect, "compare": compare, "plot": plot}[command](args)
    except ReportError as e:
        print(f"fednas-mpi: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # output piped into e.g. `head`, which stopped reading: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
