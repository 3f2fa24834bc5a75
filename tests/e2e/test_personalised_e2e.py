"""per-FedAvg, FedRep and FedBABU on MobileNetV3 end to end under mpirun: -n 1 equals -n 3,
FedRep's heads stay per client and survive resume, FedBABU's head stays at its init."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import TINY, launch, run_per_rank_count

from fednas_mpi.config import load
from fednas_mpi.models import build_model
from fednas_mpi.seeding import SERVER, SETUP, torch_rng
from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

BASE = {
    **TINY,
    "run": {**TINY["run"], "rounds": 3, "personal_eval_every": 2},
    "partition": {**TINY["partition"], "train_size": 48, "eval_size": 24},
    "model": {"name": "mobilenet_v3_small", "mobilenet": {"width_mult": 0.25}},
    "algorithm": {**TINY["algorithm"], "local_epochs": 1},
}


def _last(run):
    return read_checkpoint(list_checkpoints(run)[-1][1])


def _assert_same(a, b, atol=1e-5):
    assert list(a.state) == list(b.state)
    for k in a.state:
        torch.testing.assert_close(a.state[k], b.state[k], rtol=0, atol=atol, msg=k)
    for name in ("global_acc", "global_loss", "personal_acc", "personal_acc_std", "train_loss"):
        np.testing.assert_allclose(a.metrics[name], b.metrics[name], atol=atol, err_msg=name)
    assert sorted(a.client_states) == sorted(b.client_states)
    for c in a.client_states:
        for k in a.client_states[c]:
            torch.testing.assert_close(
                a.client_states[c][k], b.client_states[c][k], rtol=0, atol=atol
            )


@pytest.fixture(scope="module")
def fedrep_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fedrep")
    return run_per_rank_count(
        root,
        BASE,
        algorithm={
            "name": "fedrep",
            "local_epochs": 1,
            "batch_size": 16,
            "lr": 0.05,
            "fedrep": {"head_epochs": 1},
        },
    )


def test_fedrep_ranks_agree_and_heads_stay_per_client(fedrep_runs):
    a, b = _last(fedrep_runs[1]), _last(fedrep_runs[3])
    _assert_same(a, b)
    # the global model (what is broadcast and averaged) has no head; each sampled client
    # keeps exactly its own head
    assert a.state and not any(k.startswith("head.") for k in a.state)
    assert a.client_states
    for state in a.client_states.values():
        assert sorted(state) == ["head.bias", "head.weight"]
    heads = [s["head.weight"] for s in a.client_states.values()]
    assert any(not torch.equal(heads[0], h) for h in heads[1:])
    # personal accuracy measured in round 2 and the last, not in round 1
    pa = a.metrics["personal_acc"]
    assert np.isnan(pa[0]) and np.isfinite(pa[1:]).all()
    assert np.isfinite(a.metrics["global_acc"]).all()


def test_fedrep_heads_survive_resume(fedrep_runs, tmp_path):
    full = fedrep_runs[3]
    part = tmp_path / "part"
    shutil.copytree(full, part)
    (part / "round_00003.h5").unlink()
    before = read_checkpoint(part / "round_00002.h5")
    assert before.client_states
    res = launch(3, ["--resume", str(part)], timeout=240)
    assert res.returncode == 0, res.stderr
    a, b = read_checkpoint(full / "round_00003.h5"), read_checkpoint(part / "round_00003.h5")
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    assert sorted(a.client_states) == sorted(b.client_states)
    for c, state in a.client_states.items():
        for k in state:
            assert torch.equal(state[k], b.client_states[c][k]), (c, k)
    for name in ("global_acc", "personal_acc", "personal_acc_std", "train_loss"):
        np.testing.assert_array_equal(a.metrics[name], b.metrics[name])


def test_perfedavg_ranks_agree(tmp_path, variant="hessian_free"):
    runs = run_per_rank_count(
        tmp_path,
        BASE,
        algorithm={
            "name": "perfedavg",
            "batch_size": 16,
            "lr": 0.05,
            "perfedavg": {"variant": variant, "alpha": 0.02},
        },
    )
    a, b = _last(runs[1]), _last(runs[3])
    _assert_same(a, b)
    assert not a.client_states and np.isfinite(a.metrics["personal_acc"][-1])


def test_fedbabu_ranks_agree_and_head_stays_at_init(tmp_path):
    runs = run_per_rank_count(
        tmp_path, BASE, algorithm={"name": "fedbabu", "batch_size": 16, "lr": 0.05}
    )
    a, b = _last(runs[1]), _last(runs[3])
    _assert_same(a, b)
    cfg = load(runs[3] / "config.yaml")
    net = build_model(
        cfg.model, (1, 8, 8), 10, torch_rng(cfg.run.seed, SETUP, SERVER, "model.init")
    )
    init = net.state_dict()
    for ck in (a, b):
        for k in ("head.weight", "head.bias"):
            assert torch.equal(ck.state[k], init[k]), k  # bit-equal after 3 rounds
        assert not torch.equal(ck.state["body.3.weight"], init["body.3.weight"])
