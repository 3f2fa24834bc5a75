"""``fednas-mpi export RUN_DIR [--round N] [--client ID] --out FILE``: no MPI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .artifact import sidecar
from .build import ExportError

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fednas-mpi export",
        description="Write a run's model as a torch.export program (loads with torch alone: "
        "torch.export.load(FILE).module()) with its genotype and preprocessing "
        "inside and in FILE's .json beside it. Search-space networks get "
        "BatchNorm running statistics recalibrated on the clients' train data "
        "(never the test set), so they run in eval mode on any batch size.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run directory")
    p.add_argument("--out", metavar="FILE", required=True, help="file to write (e.g. model.pt2)")
    p.add_argument(
        "--round",
        type=int,
        metavar="N",
        help="export the checkpoint of round N (default: the newest)",
    )
    p.add_argument(
        "--client",
        type=int,
        metavar="ID",
        help="personalised methods: the personalised model of client ID",
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=8192,
        metavar="N",
        help="training images for the BatchNorm recalibration (default 8192; "
        "all of them if there are fewer)",
    )
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    return p


def _pct(v) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.2f}%"


def report(meta: dict) -> str:
    acc = meta["accuracy"]
    who = f", client {meta['client']}" if meta["client"] is not None else ""
    lines = [
        f"exported {meta['method']} on {meta['dataset']}, round {meta['round']}{who}",
        f"  accuracy on the {acc['evaluated_on']}: exported {_pct(acc['exported'])}, "
        f"method's evaluation {_pct(acc['method_evaluation'])}",
    ]
    if acc.get("frozen_batch_statistics") is not None:
        lines.append(
            f"  frozen network before recalibration (batch statistics, as the "
            f"method evaluates): {_pct(acc['frozen_batch_statistics'])}"
        )
    if acc.get("exported_test") is not None:
        lines.append(f"  exported on the server test set: {_pct(acc['exported_test'])}")
    lines.append(
        f"  run's global accuracy at round {meta['round']} {_pct(acc['run_global_acc'])}"
        + (
            f", personal accuracy (mean over clients) {_pct(acc['run_personal_acc'])}"
            if acc["run_personal_acc"] == acc["run_personal_acc"]
            else ""
        )
    )
    bn = meta["batchnorm"]
    if "samples" in bn:
        lines.append(
            f"  BatchNorm: {bn['layers']} layers recalibrated on {bn['samples']} "
            f"images of {bn['data']}"
        )
    lines.append(
        f"  {meta['size_bytes'] / 1e6:.2f} MB, {meta['params']:,} parameters, "
        f"{meta['macs'] / 1e6:.2f} M MACs per image"
    )
    if meta.get("genotype") and meta["genotype"].get("text"):
        lines += ["  genotype:"] + [f"    {t}" for t in meta["genotype"]["text"].splitlines()]
    elif meta.get("cells"):
        terms = [sum(len(node) for node in cell["nodes"]) for cell in meta["cells"]]
        lines.append(
            f"  architecture: the search's mixture, {terms} weighted ops per cell "
            f"(no derived genotype; every term is listed under 'cells' in the .json)"
        )
    pre = meta["preprocessing"]
    lines.append(
        f"  input: {pre['layout']} {pre['dtype']} {pre['input_shape']}, "
        f"{pre['formula']} (scale {pre['scale']:.6g}, mean {pre['mean']}, "
        f"std {pre['std']})"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from . import export_run

    try:
        meta = export_run(args.run, args.out, args.round, args.client, args.calibration_samples)
    except ExportError as e:
        print(f"fednas-mpi: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(meta, indent=2, sort_keys=True) if args.json else report(meta))
    print(f"wrote {args.out} (description also in {sidecar(Path(args.out))})")
    return 0
