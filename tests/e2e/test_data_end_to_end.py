"""``mpirun -n 2 fednas-mpi`` on real Fashion-MNIST, and a missing dataset reported once."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from debian_data import need_fashion_mnist
from helpers import launch, write_config

from fednas_mpi.cli import main
from fednas_mpi.config import load
from fednas_mpi.data import load_dataset, make_partition
from fednas_mpi.store import list_checkpoints

pytestmark = pytest.mark.slow


def test_fashion_mnist_label_skew_run(tmp_path, capsys):
    need_fashion_mnist()
    cfg_path = write_config(
        tmp_path / "cfg.yaml",
        run={"name": "fm", "seed": 3, "rounds": 2},
        data={"name": "fashion_mnist", "root": str(tmp_path / "no-root"), "resize": 8},
        partition={
            "scheme": "label_skew",
            "tau": 3,
            "num_clients": 4,
            "train_size": 50,
            "eval_size": 20,
        },
        federation={"clients_per_round": 2},
        model={"channels": [4, 8], "hidden": 16},
    )
    out = tmp_path / "run"
    res = launch(2, [str(cfg_path), "--out", str(out)])
    assert res.returncode == 0, res.stderr
    assert "fedavg on fashion_mnist, 4 clients (label_skew)" in res.stdout
    files = list_checkpoints(out)
    assert [r for r, _ in files] == [1, 2]
    with h5py.File(files[-1][1], "r") as f:
        train, held = f["partition/train_hist"][()], f["partition/eval_hist"][()]
        assert f["state"]  # a model was trained and stored
    assert train.shape == (4, 10)
    assert (train.sum(axis=1) == 50).all() and (held.sum(axis=1) == 20).all()
    assert ((train > 0).sum(axis=1) == 3).all() and ((held > 0).sum(axis=1) == 3).all()
    # the partition the ranks used is the one this process computes from the same seed
    cfg = load(cfg_path)
    labels = load_dataset(cfg.data, cfg.run.seed).train_y.numpy()
    part = make_partition(labels, cfg.partition, cfg.run.seed)
    assert np.array_equal(train, part.histograms(labels, "train"))
    assert np.array_equal(held, part.histograms(labels, "eval"))
    # and the stats command reads it back from the run directory
    assert main(["data", "stats", str(out)]) == 0
    assert (
        "fashion_mnist: label skew tau=3, 4 clients x (50+20); train split"
        in capsys.readouterr().out
    )
    assert (out / "partition_train.png").stat().st_size > 1000


def test_missing_cifar_is_one_error_naming_the_fetch_command(tmp_path):
    root = tmp_path / "data"
    cfg_path = write_config(tmp_path / "cfg.yaml", data={"name": "cifar10", "root": str(root)})
    res = launch(2, [str(cfg_path), "--out", str(tmp_path / "run")], timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("fednas-mpi: error") == 1, res.stderr
    assert res.stderr.count(f"fednas-mpi data download cifar10 --root {root}") == 1
    assert "data_batch_1" in res.stderr and "Traceback" not in res.stderr
    # config.yaml, the run's first file, alone: usable as --out (or --resume) again
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.yaml"]
