"""FedNAS end to end under mpirun: search, hard pruning and retraining in one run; -n 1 and
-n 3 agree; a run interrupted while retraining resumes bit-identically."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import launch, run_per_rank_count

from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

FEDNAS = {
    "run": {"name": "fednas", "seed": 3, "rounds": 4},
    "data": {"name": "digits"},
    # small fixed client splits keep the supernet rounds short on a shared 2-core machine
    "partition": {
        "scheme": "dirichlet",
        "alpha": 0.5,
        "num_clients": 6,
        "min_train": 8,
        "train_size": 48,
        "eval_size": 16,
    },
    "federation": {"clients_per_round": 3},
    "model": {"name": "darts", "darts": {"init_channels": 4, "layers": 3, "nodes": 2}},
    "algorithm": {
        "name": "fednas",
        "local_epochs": 1,
        "batch_size": 16,
        "fednas": {"search_rounds": 2},
    },
}
STAGES = ["search", "search", "retrain", "retrain"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_per_rank_count(tmp_path_factory.mktemp("fednas"), FEDNAS)


def _last(run_dir):
    return read_checkpoint(list_checkpoints(run_dir)[-1][1])


def test_one_and_three_ranks_agree(runs):
    a, b = _last(runs[1]), _last(runs[3])
    assert a.round == b.round == 4
    assert a.spec == b.spec and a.spec["genotype"] is not None
    assert a.stages == b.stages
    for k in (
        "global_acc",
        "global_loss",
        "train_loss",
        "val_loss",
        "local_acc",
        "lr",
        "ops_alive",
        "acc_before_prune",
        "acc_after_prune",
    ):
        np.testing.assert_allclose(a.metrics[k], b.metrics[k], atol=1e-5, err_msg=k)
    assert list(a.state) == list(b.state)
    for k in a.state:
        torch.testing.assert_close(a.state[k], b.state[k], rtol=0, atol=1e-5)


def test_stages_switch_and_table3_accuracies(runs):
    for n in (1, 3):
        ck = _last(runs[n])
        assert ck.stages == STAGES
        assert [
            read_checkpoint(p, tensors=False).attrs["stage"] for _, p in list_checkpoints(runs[n])
        ] == STAGES
        m = ck.metrics
        # the architecture changes once, at the end of round 2 (index 1): accuracy of the
        # supernet before pruning and of the pruned network right after it, NaN elsewhere
        for k in ("acc_before_prune", "acc_after_prune"):
            assert np.isfinite(m[k][1]) and 0.0 <= m[k][1] <= 1.0, k
            assert np.isnan(m[k][[0, 2, 3]]).all(), k
        assert np.isfinite(m["global_acc"]).all() and np.isfinite(m["train_loss"]).all()
        # MiLeNAS validation loss only while searching
        assert np.isfinite(m["val_loss"][:2]).all() and np.isnan(m["val_loss"][2:]).all()
        # time per round (and so per stage) is recorded for every round
        assert np.isfinite(m["round_time"]).all() and (m["round_time"] > 0).all()
        # 2 cells x 5 edges x 8 ops while searching; one op on each of 2 x 2 x 2 edges after
        assert m["ops_alive"].tolist() == [80.0, 8.0, 8.0, 8.0]


def test_learning_rate_restarts_for_retraining(runs):
    lr = _last(runs[3]).metrics["lr"]
    # cosine from 0.025 to 0.001 over each two-round stage
    np.testing.assert_allclose(lr, [0.025, 0.001, 0.025, 0.001], rtol=1e-12)


def test_genotype_and_discrete_network(runs):
    ckpts = [read_checkpoint(p) for _, p in list_checkpoints(runs[3])]
    first, switch, last = ckpts[0], ckpts[1], ckpts[-1]
    assert first.spec["genotype"] is None and first.spec["inputs"] == "sum"
    g = last.spec["genotype"]
    assert switch.spec == last.spec  # derived once, at the switch, then kept
    assert set(g) == {"normal", "reduce", "text"}
    for cell in ("normal", "reduce"):
        nodes = g[cell]["nodes"]
        assert len(nodes) == 2 and all(len(n["inputs"]) == 2 for n in nodes)
        assert all(x["op"] != "none" for n in nodes for x in n["inputs"])
        for j, n in enumerate(nodes):
            inputs = [x["input"] for x in n["inputs"]]
            assert len(set(inputs)) == 2 and all(0 <= i < j + 2 for i in inputs)
    assert json.loads((runs[3] / "genotype.json").read_text()) == g
    assert json.loads((runs[1] / "genotype.json").read_text()) == g

    def edge_keys(state):
        return {k for k in state if ".edges." in k}

    assert edge_keys(switch.state) < edge_keys(first.state)
    assert edge_keys(last.state) == edge_keys(switch.state)
    # retraining starts from a fresh initialisation and then trains
    shared = [k for k in switch.state if switch.state[k].dim() >= 2 and k in first.state]
    assert "classifier.weight" in shared
    assert not torch.equal(switch.state["classifier.weight"], last.state["classifier.weight"])


def test_resume_in_the_retrain_stage_is_bit_identical(runs, tmp_path):
    full = runs[3]
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for r in (3, 4):
        (part / f"round_{r:05d}.h5").unlink()
    (part / "genotype.json").unlink()
    res = launch(3, ["--resume", str(part)], timeout=240)
    assert res.returncode == 0, res.stderr
    a, b = read_checkpoint(full / "round_00004.h5"), read_checkpoint(part / "round_00004.h5")
    assert a.spec == b.spec and a.stages == b.stages == STAGES
    assert list(a.state) == list(b.state)
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    for k in (
        "global_acc",
        "global_loss",
        "train_loss",
        "local_acc",
        "lr",
        "acc_before_prune",
        "acc_after_prune",
    ):
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k], err_msg=k)
    assert json.loads((part / "genotype.json").read_text()) == a.spec["genotype"]
