"""``export_run``: the steps of ``fednas-mpi export``, from a run directory to a file
measured against the method's own evaluation (the package docstring has the outline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from .. import __version__
from ..config import ConfigError
from ..migrations import from_stored
from . import artifact, deploy
from .build import ExportError, build_target, client_data
from .calibration import calibration_batches
from .checkpoint import checkpoint_to_export
from .preprocessing import preprocessing


def _run_value(ckpt, name: str) -> float:
    values = np.asarray(ckpt.metrics.get(name, []), dtype=np.float64)[: ckpt.round]
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else float("nan")


def export_run(
    run_dir: str | Path,
    out: str | Path,
    round_: int | None = None,
    client: int | None = None,
    calibration_samples: int = 8192,
    calibration_batch: int = 256,
) -> dict:
    """Export the model of ``run_dir`` (newest checkpoint, or round ``round_``; the
    personalised model of ``client``) to ``out``; returns its description with the
    measured accuracies. Raises ExportError on requests the run cannot satisfy."""
    from ..algorithms.common.training import evaluate
    from ..data import DataError, dataset_and_partition
    from ..kernels import use_reference

    run_dir, out = Path(run_dir), Path(out)
    ckpt = checkpoint_to_export(run_dir, round_)
    try:
        cfg = from_stored(yaml.safe_load(ckpt.config_yaml), source=ckpt.path)
    except ConfigError as e:
        raise ExportError(
            f"{ckpt.path}: this fednas-mpi cannot read the run's config ({e})"
        ) from None
    use_reference()  # plain torch ops; the deployed network needs no library of ours
    try:
        dataset, partition = dataset_and_partition(cfg)
    except DataError as e:
        raise ExportError(str(e)) from None
    target = build_target(cfg, ckpt, dataset, partition, client)
    if target.eval_on == "test":
        x, y = dataset.test_x, dataset.test_y
    else:
        data = client_data(dataset, partition, client)
        x, y = data.eval_x, data.eval_y
    bn: dict = {"kind": "running statistics of the run (FedAvg-averaged)"}
    frozen_acc = None
    if target.search:
        # Before recalibration the frozen network must be the method's own evaluation.
        frozen_acc = evaluate(target.module, x, y)[1]
        batches, seen = calibration_batches(
            dataset, target.calibration, calibration_samples, calibration_batch, cfg.run.seed
        )
        layers = len(deploy.batch_stat_norms(target.module))
        deploy.recalibrate(target.module, batches)
        whose = "all clients' train splits" if client is None else f"client {client}'s train split"
        bn = {
            "kind": "recalibrated running statistics",
            "data": whose,
            "samples": seen,
            "batch_size": calibration_batch,
            "layers": layers,
        }
    shape = tuple(dataset.input_shape)
    meta = {
        "format": artifact.FORMAT,
        "format_version": artifact.FORMAT_VERSION,
        "fednas_mpi": __version__,
        "torch": torch.__version__,
        "run": str(run_dir),
        "checkpoint": ckpt.path.name if ckpt.path else None,
        "round": ckpt.round,
        "method": cfg.algorithm.name,
        "dataset": cfg.data.name,
        "model": cfg.model.name,
        "client": client,
        "num_classes": dataset.num_classes,
        "preprocessing": preprocessing(cfg, dataset),
        "batchnorm": bn,
        "genotype": target.genotype,
        "cells": target.cells,
        "notes": target.notes,
        "params": artifact.count_params(target.module),
        "macs": artifact.count_macs(target.module, shape),
    }
    program = artifact.export(target.module, shape)
    artifact.write(program, out, meta)
    loaded, _ = artifact.load(out)
    exported_acc = _accuracy(loaded, x, y)
    meta.update(
        size_bytes=out.stat().st_size,
        accuracy={
            "evaluated_on": "server test set"
            if target.eval_on == "test"
            else f"client {client}'s eval split",
            "exported": exported_acc,
            "method_evaluation": target.reference_acc,
            "frozen_batch_statistics": frozen_acc,
            "run_global_acc": _run_value(ckpt, "global_acc"),
            "run_personal_acc": _run_value(ckpt, "personal_acc"),
        },
    )
    if client is not None:
        meta["accuracy"]["exported_test"] = _accuracy(loaded, dataset.test_x, dataset.test_y)
    artifact.write(program, out, meta)  # again, now with what the loaded file measured
    return meta


@torch.no_grad()
def _accuracy(module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    if len(y) == 0:
        return float("nan")
    correct = sum(
        int((module(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
        for i in range(0, len(y), batch)
    )
    return correct / len(y)
