"""Export a run's model as a file that loads with torch alone (``fednas-mpi export``).

``export_run`` reads a checkpoint, rebuilds the dataset and the clients' partition from
the stored config (as the report tools do), builds the model the way the method evaluates
it (``build``), recalibrates the BatchNorm of search-space networks on training data
(``deploy.recalibrate``: the clients' train splits, never the test set), writes the
``torch.export`` program with its description (``artifact``) and measures the file it
wrote, loaded back, against the method's own evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from .. import __version__
from ..config import ConfigError
from ..migrations import from_stored
from ..seeding import SERVER, SETUP, numpy_rng, torch_rng
from ..store import (
    CheckpointError,
    checkpoint_path,
    newest_readable,
    no_readable_message,
    read_checkpoint,
)
from . import artifact, deploy
from .build import PERSONAL, ExportError, build_target, client_data

__all__ = ["ExportError", "PERSONAL", "export_run", "preprocessing"]


def _checkpoint(run_dir: Path, round_: int | None):
    if round_ is not None:
        path = checkpoint_path(run_dir, round_)
        if not path.is_file():
            raise ExportError(
                f"{path}: no such checkpoint (store.keep may have deleted it); "
                f"give another --round or none for the newest"
            )
        try:
            return read_checkpoint(path)
        except CheckpointError as e:
            raise ExportError(str(e)) from None
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    ckpt, skipped = newest_readable(run_dir)
    if ckpt is None:
        raise ExportError(no_readable_message(run_dir, skipped))
    return ckpt


def preprocessing(cfg, dataset) -> dict:
    """What a raw image must go through to become the model's input."""
    c, h, w = dataset.input_shape
    out: dict = {"input_shape": [c, h, w], "dtype": "float32", "layout": "NCHW"}
    if cfg.data.name == "digits":
        from sklearn.datasets import load_digits

        from ..data.datasets import _stratified_holdout

        bunch = load_digits()
        x = bunch.images.astype(np.float32) / 16.0
        train, _ = _stratified_holdout(
            bunch.target,
            cfg.data.test_fraction,
            numpy_rng(cfg.run.seed, SETUP, SERVER, "data.holdout"),
        )
        out.update(
            source="scikit-learn digits: 8x8 pixel values 0..16",
            scale=1 / 16,
            mean=[float(x[train].mean())],
            std=[float(x[train].std())],
        )
    else:
        out.update(
            source=f"{cfg.data.name}: uint8 pixels 0..255",
            scale=1 / 255,
            mean=list(dataset.mean),
            std=list(dataset.std),
        )
    if cfg.data.resize:
        out["resize"] = f"{cfg.data.resize}x{cfg.data.resize}, bilinear with antialiasing"
    out["formula"] = "x = (pixels * scale - mean[c]) / std[c]"
    return out


def _calibration_batches(dataset, index: np.ndarray, samples: int, batch: int, seed: int):
    """At most ``samples`` training images in a seeded order, as near-equal batches of at
    most ``batch`` (every batch counts alike in the running averages)."""
    order = torch.randperm(
        len(index), generator=torch_rng(seed, SETUP, SERVER, "export.calibration")
    )
    chosen = np.asarray(index)[order[:samples].numpy()]
    parts = np.array_split(chosen, max(1, -(-len(chosen) // batch)))
    return [dataset.train_inputs(np.sort(p)) for p in parts if len(p)], len(chosen)


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
    from ..data import DataError, load_dataset, make_partition
    from ..kernels import use_reference

    run_dir, out = Path(run_dir), Path(out)
    ckpt = _checkpoint(run_dir, round_)
    try:
        cfg = from_stored(yaml.safe_load(ckpt.config_yaml), source=ckpt.path)
    except ConfigError as e:
        raise ExportError(
            f"{ckpt.path}: this fednas-mpi cannot read the run's config ({e})"
        ) from None
    use_reference()  # plain torch ops; the deployed network needs no library of ours
    try:
        dataset = load_dataset(cfg.data, cfg.run.seed)
        partition = make_partition(
            dataset.train_y.numpy(), cfg.partition, cfg.run.seed, num_classes=dataset.num_classes
        )
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
        batches, seen = _calibration_batches(
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
