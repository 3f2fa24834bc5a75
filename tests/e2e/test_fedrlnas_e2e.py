"""FedRLNAS end to end under mpirun: -n 1 and -n 3 agree (supernet, policy, baseline and
Adam moments); the argmax child is the final model."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from helpers import launch, run_per_rank_count

from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

FEDRLNAS = {
    "run": {"name": "fedrlnas", "seed": 3, "rounds": 3},
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
    "algorithm": {
        "name": "fedrlnas",
        "local_epochs": 1,
        "batch_size": 16,
        "fedrlnas": {"epsilon": 0.2},
    },
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_per_rank_count(tmp_path_factory.mktemp("fedrlnas"), FEDRLNAS)


def test_one_and_three_ranks_agree(runs):
    ck = {n: [read_checkpoint(p) for _, p in list_checkpoints(runs[n])] for n in (1, 3)}
    for a, b in zip(ck[1], ck[3]):
        assert a.spec == b.spec
        for k in a.state:
            torch.testing.assert_close(a.state[k], b.state[k], rtol=0, atol=1e-5)
        for k in a.server_state:
            torch.testing.assert_close(a.server_state[k], b.server_state[k], rtol=0, atol=1e-5)
    a, b = ck[1][-1], ck[3][-1]
    for k in (
        "global_acc",
        "train_loss",
        "reward",
        "local_acc",
        "local_acc_std",
        "mean_reward",
        "baseline",
        "ops_alive",
    ):
        np.testing.assert_allclose(a.metrics[k], b.metrics[k], atol=1e-5, err_msg=k)
    assert a.spec["genotype"] is not None
    assert a.metrics["ops_alive"].tolist() == [80.0, 80.0, 10.0]
    # the final derivation keeps the weights: no meaningful "before" model to evaluate
    assert np.isnan(a.metrics["acc_before_prune"]).all()
    assert np.isfinite(a.metrics["acc_after_prune"][-1])
    # the policy moved away from its initialisation
    assert not torch.equal(ck[1][0].state["alpha_normal"], ck[1][1].state["alpha_normal"])


def test_a_checkpoint_with_the_old_rl_entries_resumes_bit_identically(runs, tmp_path):
    """Files written before the auxiliary channel (ClientResult.aux) kept the round sums
    in the global state as rl.* entries, zero between rounds. Such a round-2 file (made
    here from this run's own) resumes to the very round 3 of the uninterrupted run."""
    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(runs[1] / "config.yaml", run)
    old = shutil.copy(runs[1] / "round_00002.h5", run)
    with h5py.File(old, "a") as f:
        g = f["state"]
        order = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs["order"]]
        extra = {"rl.inv_n": (), "rl.reward": ()}
        for part in ("count", "score", "rscore"):
            for c in ("normal", "reduce"):
                extra[f"rl.{part}_{c}"] = g[f"alpha_{c}"].shape
        for name, shape in extra.items():
            g.create_dataset(name, data=np.zeros(shape)).attrs["dtype"] = "float64"
        g.attrs["order"] = order + list(extra)
    res = launch(1, ["--resume", str(run)], timeout=240)
    assert res.returncode == 0, res.stderr
    a, b = read_checkpoint(runs[1] / "round_00003.h5"), read_checkpoint(run / "round_00003.h5")
    assert a.spec == b.spec and list(a.state) == list(b.state)
    for part in ("state", "server_state"):
        for k, v in getattr(a, part).items():
            assert torch.equal(v, getattr(b, part)[k]), (part, k)
    for k, v in a.metrics.items():
        if not k.endswith("_time"):
            np.testing.assert_array_equal(v, b.metrics[k], err_msg=k)
