"""FedMetaNAS with ``arch_update: server`` end to end under mpirun: -n 1 and -n 3 agree
(state, server moments, metrics), the moments are stepped only in the search rounds after
the warm-up, and resuming from the round-2 checkpoint gives the uninterrupted run's final
round bit for bit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import darts_e2e_config, launch, run_per_rank_count

from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

SERVER = darts_e2e_config(
    "server_opt",
    4,
    "fedmetanas",
    {
        "arch_update": "server",
        "server_arch_lr": 0.3,
        "arch_warmup_rounds": 1,
        "final_round": 3,
        "prune_gap": 0.3,
        "combo_prune_gap": 0.3,
        "settle_rounds": 0,
    },
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_per_rank_count(tmp_path_factory.mktemp("server_opt"), SERVER)


def test_one_and_three_ranks_agree_and_the_moments_persist(runs):
    a = read_checkpoint(list_checkpoints(runs[1])[-1][1])
    b = read_checkpoint(list_checkpoints(runs[3])[-1][1])
    assert a.round == b.round == 4 and a.spec == b.spec and a.stages == b.stages
    assert a.spec["genotype"] is not None
    for part in ("state", "server_state"):
        sa, sb = getattr(a, part), getattr(b, part)
        assert list(sa) == list(sb)
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-5, msg=f"{part} {k}")
    for k in ("global_acc", "train_loss", "alpha_gap", "server_arch_step"):
        np.testing.assert_allclose(a.metrics[k], b.metrics[k], atol=1e-5, err_msg=k)
    # stepped after rounds 2 and 3 (not in the warm-up, not after the derivation)
    assert float(a.server_state["arch_opt.t"]) == 2.0
    step = a.metrics["server_arch_step"]
    assert np.isnan(step[0]) and np.isnan(step[3]) and (step[1:3] > 0).all()
    # the moments are in every checkpoint, with the same keys from round 1 on
    first = read_checkpoint(list_checkpoints(runs[1])[0][1])
    assert list(first.server_state) == list(a.server_state)
    assert float(first.server_state["arch_opt.t"]) == 0.0


def test_resuming_from_round_2_is_bit_identical(runs, tmp_path):
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copy(runs[1] / "config.yaml", run)
    shutil.copy(runs[1] / "round_00002.h5", run)
    res = launch(1, ["--resume", str(run)], timeout=240)
    assert res.returncode == 0, res.stderr
    a, b = read_checkpoint(runs[1] / "round_00004.h5"), read_checkpoint(run / "round_00004.h5")
    assert a.spec == b.spec and list(a.state) == list(b.state)
    for part in ("state", "server_state"):
        sa, sb = getattr(a, part), getattr(b, part)
        assert list(sa) == list(sb)
        for k, v in sa.items():
            assert torch.equal(v, sb[k]), (part, k)
    for k, v in a.metrics.items():
        if not k.endswith("_time"):
            np.testing.assert_array_equal(v, b.metrics[k], err_msg=k)
