"""FedDSNAS end to end under mpirun: -n 1 and -n 3 agree; the argmax child is kept at the
end with the searched weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run_per_rank_count

from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

FEDDSNAS = {
    "run": {"name": "feddsnas", "seed": 3, "rounds": 3},
    "data": {"name": "digits"},
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
    "algorithm": {"name": "feddsnas", "local_epochs": 1, "batch_size": 16},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_per_rank_count(tmp_path_factory.mktemp("feddsnas"), FEDDSNAS)


def test_one_and_three_ranks_agree_and_child_is_final(runs):
    a = read_checkpoint(list_checkpoints(runs[1])[-1][1])
    b = read_checkpoint(list_checkpoints(runs[3])[-1][1])
    assert a.round == b.round == 3 and a.spec == b.spec
    assert a.spec["genotype"] is not None and a.spec["inputs"] == "sum"
    for k in (
        "global_acc",
        "global_loss",
        "train_loss",
        "local_acc",
        "local_acc_std",
        "ops_alive",
        "round_time",
    ):
        assert k in a.metrics, k
    for k in (
        "global_acc",
        "global_loss",
        "train_loss",
        "local_acc",
        "ops_alive",
        "acc_before_prune",
        "acc_after_prune",
    ):
        np.testing.assert_allclose(a.metrics[k], b.metrics[k], atol=1e-5, err_msg=k)
    for k in a.state:
        torch.testing.assert_close(a.state[k], b.state[k], rtol=0, atol=1e-5)
    m = a.metrics
    # one op per edge in the end; the child's accuracy is the argmax path's before it
    assert m["ops_alive"].tolist() == [80.0, 80.0, 10.0]
    np.testing.assert_allclose(m["acc_before_prune"][-1], m["acc_after_prune"][-1], atol=1e-6)
