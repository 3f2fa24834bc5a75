"""FedMetaNAS with ``derived_training: sgd`` end to end under mpirun: the derived network
trains with the evaluation recipe after the derivation; -n 1 and -n 3 agree, and resuming
from the derivation's checkpoint gives the uninterrupted run's last round bit for bit."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from helpers import darts_e2e_config, launch, run_per_rank_count

from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

# derived after round 2: rounds 3 and 4 train the derived network with the recipe
SGD = darts_e2e_config(
    "derived_sgd",
    4,
    "fedmetanas",
    {
        "final_round": 2,
        "prune_gap": 0.3,
        "combo_prune_gap": 0.3,
        "settle_rounds": 0,
        "derived_training": "sgd",
        "derived_lr": 0.05,
        "derived_lr_min": 0.005,
    },
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_per_rank_count(tmp_path_factory.mktemp("derived_sgd"), SGD)


def test_one_and_three_ranks_agree_through_the_derived_stage(runs):
    a = read_checkpoint(list_checkpoints(runs[1])[-1][1])
    b = read_checkpoint(list_checkpoints(runs[3])[-1][1])
    assert a.round == b.round == 4 and a.spec == b.spec and a.spec["genotype"] is not None
    assert a.stages == b.stages == ["search"] * 2 + ["derived"] * 2
    assert list(a.state) == list(b.state)
    for k in a.state:
        torch.testing.assert_close(a.state[k], b.state[k], rtol=0, atol=1e-5, msg=k)
    for k in ("global_acc", "train_loss", "local_acc"):
        np.testing.assert_allclose(a.metrics[k], b.metrics[k], atol=1e-5, err_msg=k)
    for k in a.client_metrics:
        np.testing.assert_allclose(a.client_metrics[k], b.client_metrics[k], atol=1e-5, err_msg=k)
    # the recipe's cosine over the two derived rounds; no support task in them
    np.testing.assert_allclose(a.metrics["weight_lr"][2:], [0.05, 0.005], rtol=1e-12)
    assert np.isnan(a.metrics["support_loss"][2:]).all()
    assert np.isfinite(a.metrics["support_loss"][:2]).all()
    assert all(math.isfinite(x) for x in a.metrics["train_loss"])


def test_resuming_from_the_derivation_is_bit_identical(runs, tmp_path):
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copy(runs[1] / "config.yaml", run)
    shutil.copy(runs[1] / "round_00002.h5", run)
    res = launch(1, ["--resume", str(run)], timeout=240)
    assert res.returncode == 0, res.stderr
    a, b = read_checkpoint(runs[1] / "round_00004.h5"), read_checkpoint(run / "round_00004.h5")
    assert a.spec == b.spec and a.stages == b.stages
    for part in ("state", "server_state"):
        sa, sb = getattr(a, part), getattr(b, part)
        assert list(sa) == list(sb)
        for k, v in sa.items():
            assert torch.equal(v, sb[k]), (part, k)
    for k, v in a.metrics.items():
        if not k.endswith("_time"):
            np.testing.assert_array_equal(v, b.metrics[k], err_msg=k)
