"""``store.tensorboard: true``: rank 0 mirrors every round into RUN_DIR/tensorboard; read the
events back with TensorBoard's own reader and compare them with the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from methods import run_config as _config

from fednas_mpi.cli import main
from fednas_mpi.report.tensorboard import tag
from fednas_mpi.store import list_checkpoints, read_checkpoint

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the tensorboard extra is not installed",
)


def test_metrics_are_grouped_by_what_they_measure():
    assert tag("round_time") == "time/round_time" and tag("comm_time") == "time/comm_time"
    assert (
        tag("ops_alive") == "arch/ops_alive" and tag("arch_entropy_ops") == "arch/arch_entropy_ops"
    )
    assert tag("global_acc") == "metrics/global_acc"


@pytest.mark.slow
def test_a_run_writes_every_round_metric_and_the_genotype(tmp_path):
    cfg = _config(tmp_path / "cfg.yaml", "fedmetanas")
    out = tmp_path / "run"
    assert main([str(cfg), "--out", str(out), "--set", "store.tensorboard=true"]) == 0
    ckpt = read_checkpoint(list_checkpoints(out)[-1][1])
    acc = event_accumulator.EventAccumulator(
        str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}
    )
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for name in (
        "global_acc",
        "round_time",
        "compute_time",
        "comm_time",
        "aggregate_time",
        "eval_time",
        "ops_alive",
        "arch_entropy_ops",
        "temperature",
        "train_loss",
    ):
        assert tag(name) in scalars, name
    for name, values in ckpt.metrics.items():
        finite = np.flatnonzero(np.isfinite(values))
        if name == "checkpoint_time":  # the newest round's is filled in by the next file
            finite = finite[finite < ckpt.round - 1]
        if not finite.size:
            continue
        events = {e.step: e.value for e in acc.Scalars(tag(name))}
        for i in finite:
            assert events[i + 1] == pytest.approx(values[i], rel=1e-6, abs=1e-6), (name, i)
    texts = {t: acc.Tensors(t) for t in acc.Tags()["tensors"]}
    genotype = [e for t, evs in texts.items() if t.startswith("genotype") for e in evs]
    assert len(genotype) == 1 and genotype[0].step == ckpt.round
    text = genotype[0].tensor_proto.string_val[0].decode()
    for line in ckpt.spec["genotype"]["text"].splitlines():
        assert line in text
    assert "tensorboard: true" in (out / "config.yaml").read_text()


def test_a_missing_tensorboard_is_bad_input_before_round_1(tmp_path, monkeypatch, capsys):
    import fednas_mpi.report.tensorboard as tb

    def missing():
        raise tb.TensorBoardUnavailable(
            "store.tensorboard is true but the tensorboard package is not installed"
        )

    monkeypatch.setattr(tb, "_writer_class", missing)
    cfg = _config(tmp_path / "cfg.yaml", "fedavg")
    code = main([str(cfg), "--out", str(tmp_path / "run"), "--set", "store.tensorboard=true"])
    assert code == 2
    assert "tensorboard package is not installed" in capsys.readouterr().err
    assert not list((tmp_path / "run").glob("round_*.h5"))
