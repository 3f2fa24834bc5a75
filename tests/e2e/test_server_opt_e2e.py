"""``arch_update: server`` end to end under mpirun. FedMetaNAS: -n 1 and -n 3 agree
(state, server moments, metrics), the moments are stepped only in the search rounds after
the warm-up, and resuming from the round-2 checkpoint gives the uninterrupted run's final
round bit for bit. FedPNAS and meta-FedPNAS (the personalised methods with shared logits):
the same agreement and resume, their client states included."""

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


# ---------------------------------------------------------------- FedPNAS, meta-FedPNAS


def _pnas(method: str) -> dict:
    """3 rounds of FedPNAS or meta-FedPNAS (one warm-up round) with the server optimiser,
    on four ops (the relaxed supernet's rounds stay short on a shared 2-core machine)."""
    keys = {"arch_update": "server", "server_arch_lr": 0.3, "tasks_per_epoch": 2}
    if method == "meta_fedpnas":
        keys.update(arch_warmup_rounds=1, prune_gap=0.3, combo_prune_gap=0.3)
    section = "fedpnas" if method == "fedpnas" else "fedmetanas"
    cfg = darts_e2e_config(f"server_opt_{method}", 3, method, keys, section)
    cfg["model"]["darts"]["primitives"] = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]
    return cfg


@pytest.fixture(scope="module", params=["fedpnas", "meta_fedpnas"])
def pnas_runs(request, tmp_path_factory):
    method = request.param
    return method, run_per_rank_count(tmp_path_factory.mktemp(method), _pnas(method))


def _same(a, b, exact: bool) -> None:
    """Equal checkpoints: bit for bit, or within float tolerance (another rank count)."""
    assert a.round == b.round and a.spec == b.spec
    parts = [("state", a.state, b.state), ("server_state", a.server_state, b.server_state)]
    assert sorted(a.client_states) == sorted(b.client_states) and a.client_states
    parts += [(f"client {c}", a.client_states[c], b.client_states[c]) for c in a.client_states]
    for part, sa, sb in parts:
        assert list(sa) == list(sb), part
        for k in sa:
            if exact:
                assert torch.equal(sa[k], sb[k]), (part, k)
            else:
                torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-5, msg=f"{part} {k}")


def test_pnas_ranks_agree_and_every_checkpoint_carries_the_moments(pnas_runs):
    method, runs = pnas_runs
    a = read_checkpoint(list_checkpoints(runs[1])[-1][1])
    _same(a, read_checkpoint(list_checkpoints(runs[3])[-1][1]), exact=False)
    # stepped every round (meta-FedPNAS: not in its warm-up round)
    steps = 3 if method == "fedpnas" else 2
    assert float(a.server_state["arch_opt.t"]) == steps
    assert np.isfinite(a.metrics["server_arch_step"]).sum() == steps
    for _, path in list_checkpoints(runs[1]):
        ck = read_checkpoint(path)
        assert list(ck.server_state) == list(a.server_state)
        assert {f"arch_opt.m.{k}" for k in ("alpha_normal", "beta_reduce")} <= set(ck.server_state)


def test_pnas_resuming_from_round_2_is_bit_identical(pnas_runs, tmp_path):
    _, runs = pnas_runs
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copy(runs[1] / "config.yaml", run)
    shutil.copy(runs[1] / "round_00002.h5", run)
    res = launch(1, ["--resume", str(run)], timeout=240)
    assert res.returncode == 0, res.stderr
    a, b = read_checkpoint(runs[1] / "round_00003.h5"), read_checkpoint(run / "round_00003.h5")
    _same(a, b, exact=True)
    for k, v in a.metrics.items():
        if not k.endswith("_time"):
            np.testing.assert_array_equal(v, b.metrics[k], err_msg=k)
