"""PerFedRLNAS end to end under mpirun: -n 1 and -n 3 agree, per-client policies persist
in the checkpoints, and a run resumed mid-way is bit-identical (client states included)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import launch, run_per_rank_count

from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

PERFEDRLNAS = {
    "run": {"name": "perfedrlnas", "seed": 4, "rounds": 4},
    "data": {"name": "digits"},
    "partition": {
        "scheme": "dirichlet",
        "alpha": 0.5,
        "num_clients": 5,
        "min_train": 8,
        "train_size": 40,
        "eval_size": 16,
    },
    "federation": {"clients_per_round": 3},
    "model": {"name": "darts", "darts": {"init_channels": 4, "layers": 3, "nodes": 2}},
    "algorithm": {
        "name": "perfedrlnas",
        "local_epochs": 1,
        "batch_size": 16,
        "perfedrlnas": {"epsilon": 0.1},
    },
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_per_rank_count(tmp_path_factory.mktemp("perfedrlnas"), PERFEDRLNAS)


def _last(d):
    return read_checkpoint(list_checkpoints(d)[-1][1])


def test_one_and_three_ranks_agree(runs):
    a, b = _last(runs[1]), _last(runs[3])
    assert a.round == b.round == 4
    for k in a.state:
        torch.testing.assert_close(a.state[k], b.state[k], rtol=0, atol=1e-5)
    assert sorted(a.client_states) == sorted(b.client_states)
    for c in a.client_states:
        for k in a.client_states[c]:
            torch.testing.assert_close(
                a.client_states[c][k],
                b.client_states[c][k],
                rtol=0,
                atol=1e-5,
                msg=f"client {c} {k}",
            )
    for k in (
        "global_acc",
        "local_acc",
        "local_acc_std",
        "reward",
        "time_cost",
        "personal_reward",
        "mean_best_acc",
        "distinct_subnets",
    ):
        np.testing.assert_allclose(a.metrics[k], b.metrics[k], atol=1e-5, err_msg=k)
    # every client that took part has its own policy and subnet
    assert a.client_states
    for st in a.client_states.values():
        assert {"alpha_normal", "alpha_reduce", "best_acc", "subnet_normal"} <= set(st)
        assert not any(k.startswith("pending.") for k in st)


def test_resume_is_bit_identical_with_client_states(runs, tmp_path):
    full = runs[3]
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for r in (3, 4):
        (part / f"round_{r:05d}.h5").unlink()
    res = launch(3, ["--resume", str(part)], timeout=240)
    assert res.returncode == 0, res.stderr
    a, b = read_checkpoint(full / "round_00004.h5"), read_checkpoint(part / "round_00004.h5")
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    assert sorted(a.client_states) == sorted(b.client_states)
    for c in a.client_states:
        for k in a.client_states[c]:
            assert torch.equal(a.client_states[c][k], b.client_states[c][k]), (c, k)
    for k in ("global_acc", "local_acc", "personal_reward"):
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k], err_msg=k)


def test_meta_variant_one_and_three_ranks_agree(tmp_path):
    cfg = {
        **PERFEDRLNAS,
        "run": {"name": "meta_perfedrlnas", "seed": 4, "rounds": 3},
        "algorithm": {
            "name": "meta_perfedrlnas",
            "local_epochs": 1,
            "batch_size": 16,
            "fedmetanas": {"prune_gap": 0.05},
        },
    }
    dirs = run_per_rank_count(tmp_path, cfg)
    a, b = _last(dirs[1]), _last(dirs[3])
    assert a.spec == b.spec
    for k in a.state:
        torch.testing.assert_close(a.state[k], b.state[k], rtol=0, atol=1e-5)
    for c in a.client_states:
        for k in a.client_states[c]:
            torch.testing.assert_close(
                a.client_states[c][k],
                b.client_states[c][k],
                rtol=0,
                atol=1e-5,
                msg=f"client {c} {k}",
            )
    for k in (
        "global_acc",
        "local_acc",
        "train_loss",
        "personal_reward",
        "ops_alive",
        "temperature",
    ):
        np.testing.assert_allclose(a.metrics[k], b.metrics[k], atol=1e-5, err_msg=k)


def test_report_tools_show_the_clients_subnets(runs):
    from fednas_mpi.report.runs import load_run
    from fednas_mpi.report.summary import clients, summary, summary_text

    run = load_run(runs[3])
    ck = _last(runs[3])
    assert sorted(run.client_subnets) == sorted(ck.client_states)
    s = summary(run)
    assert s["client_subnets"] == len(ck.client_states) >= 1
    assert 1 <= s["distinct_client_subnets"] <= s["client_subnets"]
    rows = {r["client"]: r for r in clients(run)}
    for c, st in ck.client_states.items():
        ops = [
            run.config["model"]["darts"]["primitives"][int(k)] for k in st["subnet_normal"].tolist()
        ]
        assert rows[c]["subnet"].startswith("normal: " + ",".join(ops))
    assert "one per client" in summary_text(s)
    assert "personal_reward" in run.metrics and "distinct_subnets" in run.metrics
