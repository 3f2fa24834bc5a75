"""Every paper config (configs/paper/DATASET/*.yaml) runs on CPU: one round of the paper's
model on a tiny subset of synthetic data in the dataset's real on-disk format.

Only the federation is shrunk (1 of 2 clients a round, 2 + 2 images each, 1 local epoch,
batch 2, a test split of 4 images), with ``--set`` as a user would; the model section of
each config is left as it is, and the test checks that the run built the model that config
describes.
The runs go through ``python -m fednas_mpi`` in a fresh process each, forked from one
helper that has imported torch already (``fednas_mpi.harness.ForkCLI``): the imports, not
the runs, would otherwise take most of the time.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from fednas_mpi.algorithms import DataInfo, get_algorithm
from fednas_mpi.config import load, to_dict
from fednas_mpi.harness import ForkCLI
from fednas_mpi.harness.datafiles import mnist_arrays, write_cifar10, write_cifar100, write_mnist
from fednas_mpi.shipped_configs import runs
from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
PAPER_CONFIGS = sorted((CONFIGS_DIR / "paper").glob("*/*.yaml"))
# What the glob must find: a renamed folder or a broken pattern cannot pass with fewer cases.
EXPECTED_PER_DATASET = {"cifar10": 17, "cifar100": 16, "mnist": 4, "fashion_mnist": 4}

# (channels, height, width) and classes of the real datasets, as the paper models see them.
SHAPES = {
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
}

# The paper's DARTS supernet (C=16, 8 cells, 32 x 32) takes about a second a forward pass on
# a busy 2-core machine and the MAML methods run several a step: one client of a round,
# one step of 2 images, 2 eval images.
TINY_FEDERATION = [
    "run.eval_every=1",
    "partition.num_clients=2",
    "partition.train_size=2",
    "partition.eval_size=2",
    "federation.clients_per_round=1",
    "algorithm.local_epochs=1",
    "algorithm.batch_size=2",
]


def rounds_and_schedule(method: str) -> tuple[int, list[str]]:
    """The rounds to run and the schedule keys that must fit in them (the paper's are for
    1000 rounds). FedNAS needs a search round and a retraining round, so it runs two."""
    if method == "fednas":
        return 2, ["run.rounds=2", "algorithm.fednas.search_rounds=1"]
    if method in ("fedmetanas", "meta_fedpnas", "meta_perfedrlnas"):
        return 1, ["run.rounds=1", "algorithm.fedmetanas.final_round=1"]
    return 1, ["run.rounds=1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """All four datasets, in the layout the loaders read under data.root."""
    root = tmp_path_factory.mktemp("paper-data")
    write_cifar10(root, per_batch=8, n_test=4)  # 40 train images over the 10 classes
    write_cifar100(root, n_train=200, n_test=4)  # every fine label twice
    write_mnist(root / "MNIST" / "raw", mnist_arrays(n_train=40, n_test=4, seed=1))
    write_mnist(root / "FashionMNIST" / "raw", mnist_arrays(n_train=40, n_test=4, seed=2))
    return root


@pytest.fixture(scope="module")
def cli():
    runner = ForkCLI()
    yield runner
    runner.close()


def test_the_glob_finds_every_paper_config():
    assert Counter(p.parent.name for p in PAPER_CONFIGS) == EXPECTED_PER_DATASET
    # and they are the paper runs `fednas-mpi configs` lists
    listed = {r.path for r in runs(CONFIGS_DIR) if r.scale == "paper"}
    assert listed == {p.relative_to(CONFIGS_DIR).as_posix() for p in PAPER_CONFIGS}


def test_a_run_that_fails_is_reported_as_failed(cli, tmp_path):
    """The runner passes a failing run's status on: no dataset under data.root."""
    config = CONFIGS_DIR / "paper" / "mnist" / "fedavg-cnn-tau4.yaml"
    args = [config, "--out", tmp_path / "run", "--set", f"data.root={tmp_path / 'none'}"]
    res = cli.run(args, cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count("fednas-mpi: error") == 1, res.stderr
    assert "train-images-idx3-ubyte" in res.stderr
    assert not list_checkpoints(tmp_path / "run")


@pytest.mark.parametrize(
    "config", PAPER_CONFIGS, ids=[f"{p.parent.name}/{p.stem}" for p in PAPER_CONFIGS]
)
def test_paper_config_runs_a_round_on_cpu(config, data_root, cli, tmp_path):
    paper = load(config)
    rounds, schedule = rounds_and_schedule(paper.algorithm.name)
    sets = [f"data.root={data_root}", "runtime.device=cpu", *TINY_FEDERATION, *schedule]
    out = tmp_path / "run"
    args = [config, "--out", out]
    for s in sets:
        args += ["--set", s]
    res = cli.run(args, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"round {rounds}/{rounds}" in res.stdout, res.stdout

    # the run's resolved config is the paper config with only the overrides changed
    used = load(out / "config.yaml")
    assert to_dict(used) == to_dict(load(config, sets))
    assert to_dict(used)["model"] == to_dict(paper)["model"]
    assert used.data.name == paper.data.name == config.parent.name

    files = list_checkpoints(out)
    assert [r for r, _ in files] == list(range(1, rounds + 1))
    first = read_checkpoint(files[0][1])
    assert first.round == 1
    for _, path in files:
        acc = read_checkpoint(path).metrics["global_acc"]
        assert len(acc) >= 1 and all(math.isfinite(a) and 0 <= a <= 1 for a in acc), acc

    # round 1 trained the network the paper config describes on the real input shape:
    # the tensors (names, shapes, so the parameter count) of the model built here from it
    shape, classes = SHAPES[config.parent.name]
    built = get_algorithm(paper.algorithm.name)(paper, DataInfo(shape, classes))
    expected = {k: tuple(v.shape) for k, v in built.init_global().state.items()}
    got = {k: tuple(v.shape) for k, v in first.state.items()}
    # A supernet's checkpoint may leave out operations of its mixed edges (pruned, or not
    # sampled yet, or dropped when the network was derived); every other tensor (stem,
    # cells' preprocessing, classifier, architecture parameters) is there, with the shape
    # the config implies. Fixed models have no mixed edges: the same tensors exactly.
    assert got.items() <= expected.items()
    assert {k: s for k, s in expected.items() if ".edges." not in k}.items() <= got.items()
    if paper.model.name != "darts":
        assert got == expected
    assert sum(math.prod(s) for s in got.values()) > 0
    assert all(v.isfinite().all() for v in first.state.values() if v.is_floating_point())
