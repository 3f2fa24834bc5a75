"""The random-architecture baseline end to end: the sampled genotype is the discrete
network that trains from scratch (one module per chosen edge), -n 1 and -n 3 agree, and
the genotype depends on algorithm.random_nas.genotype_seed alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import launch, run_per_rank_count, write_config

from fednas_mpi.algorithms import DataInfo, get_algorithm
from fednas_mpi.config import from_dict
from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

RANDOM = {
    "run": {"name": "random", "seed": 2, "rounds": 3, "val_every": 1},
    "data": {"name": "digits"},
    "partition": {"scheme": "dirichlet", "alpha": 0.5, "num_clients": 6, "min_train": 8},
    "federation": {"clients_per_round": 3},
    "model": {"name": "darts", "darts": {"init_channels": 4, "layers": 3, "nodes": 2}},
    "algorithm": {
        "name": "random_nas",
        "local_epochs": 1,
        "batch_size": 16,
        "random_nas": {"genotype_seed": 4},
    },
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_per_rank_count(tmp_path_factory.mktemp("random_nas"), RANDOM)


def test_one_and_three_ranks_agree_and_the_genotype_is_the_sampled_one(runs):
    a = read_checkpoint(list_checkpoints(runs[1])[-1][1])
    b = read_checkpoint(list_checkpoints(runs[3])[-1][1])
    assert a.spec == b.spec and a.stages == ["train"] * 3
    for k in ("global_acc", "val_acc", "train_loss"):
        np.testing.assert_allclose(a.metrics[k], b.metrics[k], atol=1e-5, err_msg=k)
    for k in a.state:
        torch.testing.assert_close(a.state[k], b.state[k], rtol=0, atol=1e-5)
    # the genotype is what the algorithm samples from the genotype seed, whatever run.seed
    cfg = from_dict({**RANDOM, "run": {**RANDOM["run"], "seed": 11}})
    spec = get_algorithm("random_nas")(cfg, DataInfo((1, 8, 8), 10)).init_global().spec
    assert spec == a.spec
    assert json.loads((runs[3] / "genotype.json").read_text()) == a.spec["genotype"]
    # the discrete network: one op module per chosen edge, 2 per node and cell
    edges = {".".join(k.split(".")[:5]) for k in a.state if ".edges." in k}
    assert len(edges) <= 3 * 2 * 2  # parameter-free ops (pools, skip) have no tensors
    assert np.isfinite(a.metrics["global_acc"]).all() and a.metrics["global_acc"][-1] > 0.1


def test_another_genotype_seed_gives_another_network(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", base=RANDOM)
    res = launch(
        1,
        [
            str(cfg),
            "--out",
            str(tmp_path / "g1"),
            "--set",
            "algorithm.random_nas.genotype_seed=1",
            "--set",
            "run.rounds=1",
        ],
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    other = read_checkpoint(list_checkpoints(tmp_path / "g1")[-1][1], tensors=False)
    base = get_algorithm("random_nas")(from_dict(RANDOM), DataInfo((1, 8, 8), 10))
    assert other.spec["genotype"] != base.init_global().spec["genotype"]


# ------------------------------------------------------------- genotype training (issue 25)

FOUR_NODES = {"init_channels": 4, "layers": 3, "nodes": 4, "input_k": 2}


def _no_probs(genotype: dict) -> dict:
    """A genotype's cells without the probabilities a derivation reports."""
    return {
        c: [[(x["op"], x["input"]) for x in n["inputs"]] for n in genotype[c]["nodes"]]
        for c in ("normal", "reduce")
    }


def test_a_searched_cell_retrains_from_its_run_directory_through_the_cli(tmp_path):
    search = {
        **RANDOM,
        "run": {**RANDOM["run"], "rounds": 2},
        "model": {"name": "darts", "darts": FOUR_NODES},
        "algorithm": {
            "name": "fednas",
            "local_epochs": 1,
            "batch_size": 16,
            "fednas": {"search_rounds": 1},
        },
    }
    res = launch(
        2, [str(write_config(tmp_path / "s.yaml", base=search)), "--out", str(tmp_path / "s")]
    )
    assert res.returncode == 0, res.stderr
    searched = json.loads((tmp_path / "s" / "genotype.json").read_text())
    train = {**RANDOM, "model": {"name": "darts", "darts": FOUR_NODES}}
    train["algorithm"] = {**RANDOM["algorithm"], "random_nas": {"genotype": str(tmp_path / "s")}}
    res = launch(
        2, [str(write_config(tmp_path / "t.yaml", base=train)), "--out", str(tmp_path / "t")]
    )
    assert res.returncode == 0, res.stderr
    ck = read_checkpoint(list_checkpoints(tmp_path / "t")[-1][1])
    assert _no_probs(ck.spec["genotype"]) == _no_probs(searched)
    assert np.isfinite(ck.metrics["global_acc"]).all() and ck.round == 3
    # and a published cell by name, with another seed: trains the cell the paper lists
    res = launch(
        1,
        [
            str(tmp_path / "t.yaml"),
            "--out",
            str(tmp_path / "p"),
            "--set",
            "algorithm.random_nas.genotype=pc_darts",
            "--set",
            "run.rounds=1",
        ],
    )
    assert res.returncode == 0, res.stderr
    from fednas_mpi.nas.published import published_genotype

    got = read_checkpoint(list_checkpoints(tmp_path / "p")[-1][1], tensors=False)
    assert _no_probs(got.spec["genotype"]) == _no_probs(published_genotype("pc_darts"))


@pytest.mark.parametrize(
    "sets, message",
    [
        (
            ["algorithm.random_nas.genotype=darts_v2"],
            "the normal cell has 4 intermediate nodes; the network has 2",
        ),
        (["algorithm.random_nas.genotype=nasnet"], "'nasnet' is neither a published cell"),
    ],
)
def test_a_genotype_that_does_not_fit_stops_every_rank_with_one_message(tmp_path, sets, message):
    cfg = write_config(tmp_path / "cfg.yaml", base=RANDOM)
    args = [str(cfg), "--out", str(tmp_path / "r")]
    for s in sets:
        args += ["--set", s]
    res = launch(3, args, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("fednas-mpi: error: algorithm.random_nas.genotype:") == 1
    assert message in res.stderr
    assert not (tmp_path / "r").exists()  # refused before anything was written
