"""``fednas-mpi data stats`` and ``data download``: table, heatmap PNG, sources, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fednas_mpi import config as config_mod
from fednas_mpi.cli import main
from fednas_mpi.data import load_dataset, make_partition
from fednas_mpi.data.stats import describe, table
from fednas_mpi.harness.datafiles import write_cifar10
from fednas_mpi.store import write_checkpoint

HIST = np.array([[3, 0, 12], [0, 5, 0]])


def test_table_by_hand():
    assert table(HIST).splitlines() == [
        "client |  0  1  2 | total classes",
        "---------------------------------",
        "     0 |  3  0 12 |    15       2",
        "     1 |  0  5  0 |     5       1",
        "---------------------------------",
        "   all |  3  5 12 |    20       3",
    ]


def test_describe():
    cfg = config_mod.from_dict(
        {
            "partition": {
                "scheme": "label_skew",
                "tau": 4,
                "num_clients": 100,
                "train_size": 600,
                "eval_size": 600,
                "overlap": True,
            }
        }
    )
    assert describe(cfg) == "label skew tau=4, 100 clients x (600+600, overlapping)"
    assert describe(config_mod.from_dict({})) == "Dirichlet(alpha=0.5), 10 clients"


def table_rows(text: str) -> np.ndarray:
    """The client rows of a printed table back as a (clients, classes) array."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("client |")) + 2
    rows = []
    for ln in lines[start:]:
        if ln.startswith("---"):
            break
        rows.append([int(v) for v in ln.split("|")[1].split()])
    return np.array(rows)


def check_png(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (900, 600)
        pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not blank: a drawn heatmap


DIGITS_CFG = {
    "run": {"seed": 3},
    "data": {"name": "digits"},
    "partition": {
        "scheme": "dirichlet",
        "alpha": 0.1,
        "num_clients": 6,
        "train_size": 40,
        "eval_size": 20,
    },
    "federation": {"clients_per_round": 2},
}


def test_stats_of_a_config(tmp_path, capsys):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(DIGITS_CFG))
    png = tmp_path / "out" / "h.png"
    assert main(["data", "stats", str(cfg_path), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    cfg = config_mod.load(cfg_path)
    labels = load_dataset(cfg.data, 3).train_y.numpy()
    expected = make_partition(labels, cfg.partition, 3).histograms(labels, "train")
    assert np.array_equal(table_rows(out), expected)
    assert "digits: Dirichlet(alpha=0.1), 6 clients x (40+20); train split" in out
    check_png(png)


def test_stats_of_a_config_with_overrides_and_default_png(tmp_path, capsys, monkeypatch):
    cfg_path = tmp_path / "configs" / "cfg.yaml"
    cfg_path.parent.mkdir()
    cfg_path.write_text(yaml.safe_dump(DIGITS_CFG))
    monkeypatch.chdir(tmp_path)
    args = [
        "data",
        "stats",
        str(cfg_path),
        "--part",
        "eval",
        "--set",
        "partition.scheme=label_skew",
        "--set",
        "partition.tau=3",
    ]
    assert main(args) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows.shape == (6, 10) and (rows.sum(axis=1) == 20).all()
    assert ((rows > 0).sum(axis=1) == 3).all()
    check_png(tmp_path / "cfg-partition_eval.png")  # in the current directory
    assert not list(cfg_path.parent.glob("*.png"))


def fake_run(run_dir: Path, rounds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Checkpoints as a run writes them, with known histograms."""
    cfg = config_mod.from_dict(
        {
            "data": {"name": "fashion_mnist"},
            "partition": {"scheme": "label_skew", "tau": 2, "num_clients": 3},
            "federation": {"clients_per_round": 2},
        }
    )
    run_dir.mkdir()
    train = np.array([[10, 10, 0, 0], [0, 7, 7, 0], [4, 0, 0, 4]])
    held = train // 2
    for r in range(1, rounds + 1):
        write_checkpoint(
            run_dir,
            r,
            config_yaml=config_mod.to_yaml(cfg),
            spec={},
            state={},
            server_state={},
            client_states={},
            metrics={},
            stages=["train"] * r,
            partition={
                "train_sizes": train.sum(1),
                "eval_sizes": held.sum(1),
                "train_hist": train,
                "eval_hist": held,
            },
            attrs={"seed": 0},
        )
    return train, held


@pytest.mark.parametrize("part", ["train", "eval"])
def test_stats_of_a_run_directory(tmp_path, capsys, part):
    train, held = fake_run(tmp_path / "run")
    # a newer file that does not read back is skipped
    (tmp_path / "run" / "round_00003.h5").write_bytes(b"truncated")
    assert main(["data", "stats", str(tmp_path / "run"), "--part", part]) == 0
    out = capsys.readouterr().out
    assert np.array_equal(table_rows(out), train if part == "train" else held)
    assert "fashion_mnist: label skew tau=2, 3 clients" in out and "round_00002.h5" in out
    check_png(tmp_path / "run" / f"partition_{part}.png")


def test_stats_errors_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "stats", str(tmp_path / "empty")]) == 2
    assert "no readable checkpoint" in capsys.readouterr().err
    assert main(["data", "stats", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"name": "cifar10", "root": str(tmp_path)}}))
    assert main(["data", "stats", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("fednas-mpi: error:") == 1
    assert f"fednas-mpi data download cifar10 --root {tmp_path}" in err
    fake_run(tmp_path / "run", 1)
    assert main(["data", "stats", str(tmp_path / "run"), "--set", "run.seed=1"]) == 2
    assert "--set applies to a config file" in capsys.readouterr().err


def test_download_through_torchvision(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    calls = []

    def fake(root, train, download):
        calls.append((root, train, download))
        write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake)
    assert main(["data", "download", "cifar10", "--root", str(tmp_path)]) == 0
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert str(tmp_path / "cifar-10-batches-py") in capsys.readouterr().out
    assert main(["data", "download", "digits", "--root", str(tmp_path)]) == 0
    assert "nothing to download" in capsys.readouterr().out


def test_download_failure_exit_2(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    def offline(*a, **kw):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    assert main(["data", "download", "fashion_mnist", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "downloading Fashion-MNIST" in err and "Name or service not known" in err
