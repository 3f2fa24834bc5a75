"""FedPNAS and meta-FedPNAS end to end under mpirun: -n 1 and -n 3 agree (personalised
client states included); a resumed FedPNAS run is bit-identical."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import launch, run_per_rank_count

from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow


def _config(name: str) -> dict:
    return {
        "run": {"name": name, "seed": 6, "rounds": 3},
        "data": {"name": "digits"},
        "partition": {
            "scheme": "dirichlet",
            "alpha": 0.5,
            "num_clients": 5,
            "min_train": 8,
            "train_size": 32,
            "eval_size": 16,
        },
        "federation": {"clients_per_round": 3},
        # four ops keep the relaxed supernet's rounds short on a shared 2-core machine
        "model": {
            "name": "darts",
            "darts": {
                "init_channels": 4,
                "layers": 2,
                "nodes": 2,
                "primitives": ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"],
            },
        },
        "algorithm": {
            "name": name,
            "local_epochs": 1,
            "batch_size": 16,
            # meta_fedpnas's pruning; fedpnas does not read the section
            **(
                {"fedmetanas": {"prune_gap": 0.05, "combo_prune_gap": 0.05}}
                if name == "meta_fedpnas"
                else {}
            ),
        },
    }


@pytest.fixture(scope="module", params=["fedpnas", "meta_fedpnas"])
def runs(request, tmp_path_factory):
    name = request.param
    return name, run_per_rank_count(tmp_path_factory.mktemp(name), _config(name))


def _last(d):
    return read_checkpoint(list_checkpoints(d)[-1][1])


def test_one_and_three_ranks_agree(runs):
    name, dirs = runs
    a, b = _last(dirs[1]), _last(dirs[3])
    assert a.round == b.round == 3 and a.spec == b.spec
    for k in a.state:
        torch.testing.assert_close(a.state[k], b.state[k], rtol=0, atol=1e-5)
    assert sorted(a.client_states) == sorted(b.client_states) and a.client_states
    for c in a.client_states:
        assert "palpha_normal" in a.client_states[c]
        for k in a.client_states[c]:
            torch.testing.assert_close(
                a.client_states[c][k],
                b.client_states[c][k],
                rtol=0,
                atol=1e-5,
                msg=f"client {c} {k}",
            )
    for k in ("global_acc", "local_acc", "local_acc_std", "train_loss", "ops_alive"):
        np.testing.assert_allclose(a.metrics[k], b.metrics[k], atol=1e-5, err_msg=k)
    if name == "meta_fedpnas":  # soft pruning ran
        assert a.metrics["ops_alive"][-1] < 2 * 5 * 4


def test_resume_is_bit_identical(runs, tmp_path):
    name, dirs = runs
    if name != "fedpnas":
        pytest.skip("one resume check is enough for the personalised state")
    part = tmp_path / "part"
    shutil.copytree(dirs[3], part)
    (part / "round_00003.h5").unlink()
    res = launch(3, ["--resume", str(part)], timeout=240)
    assert res.returncode == 0, res.stderr
    a, b = read_checkpoint(dirs[3] / "round_00003.h5"), read_checkpoint(part / "round_00003.h5")
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    for c in a.client_states:
        for k in a.client_states[c]:
            assert torch.equal(a.client_states[c][k], b.client_states[c][k]), (c, k)
