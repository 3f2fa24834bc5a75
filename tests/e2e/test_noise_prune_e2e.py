"""FedMetaNAS with ``prune_rule: z`` (and ``arch_update: server``) end to end under mpirun:
-n 1 and -n 3 agree (spec with its prune log and margins, state, strikes, metrics), n_eff
is Kish's of the round's client weights, the derivation's margins reach genotype.json and
``inspect``, and resuming from the round-2 checkpoint (after the first check, with its
strikes) gives the uninterrupted run's final round bit for bit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import darts_e2e_config, launch, run_per_rank_count

from fednas_mpi.cli import main
from fednas_mpi.nas import Genotype
from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow

NOISE = darts_e2e_config(
    "noise_prune",
    5,
    "fedmetanas",
    {
        "arch_update": "server",
        "server_arch_lr": 0.3,
        "arch_warmup_rounds": 1,
        "final_round": 4,
        "settle_rounds": 0,
        "prune_rule": "z",
        "prune_z": 2.0,
    },
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_per_rank_count(tmp_path_factory.mktemp("noise_prune"), NOISE)


def test_one_and_three_ranks_agree_and_the_margins_are_reported(runs, capsys):
    a = read_checkpoint(list_checkpoints(runs[1])[-1][1])
    b = read_checkpoint(list_checkpoints(runs[3])[-1][1])
    assert a.round == b.round == 5 and a.spec == b.spec and a.stages == b.stages
    for part in ("state", "server_state"):
        sa, sb = getattr(a, part), getattr(b, part)
        assert list(sa) == list(sb)
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-5, msg=f"{part} {k}")
    for k in ("global_acc", "train_loss", "n_eff", "ops_struck", "ops_pruned", "undecided_ops"):
        np.testing.assert_allclose(a.metrics[k], b.metrics[k], atol=1e-5, err_msg=k)
    # the strikes are server state, in every checkpoint from round 1 on
    assert any(k.startswith("prune.struck.") for k in a.server_state)
    first = read_checkpoint(list_checkpoints(runs[1])[0][1])
    assert list(first.server_state) == list(a.server_state)
    # n_eff is Kish's (sum w)^2 / sum w^2 over each search round's clients
    w = a.client_metrics["weight"]
    for r in range(4):
        ws = w[r][np.isfinite(w[r])]
        assert a.metrics["n_eff"][r] == pytest.approx(ws.sum() ** 2 / (ws**2).sum())
    assert np.isnan(a.metrics["n_eff"][4])  # the derived network measures nothing
    # checks after rounds 2 and 3 only (warm-up before, derivation after); removals in
    # round 3 at the earliest, each logged with gap, se and z beyond prune_z
    checked = np.isfinite(a.metrics["ops_struck"])
    assert checked.tolist() == [False, True, True, False, False]
    for x in a.spec.get("prune_log", []):
        assert x["round"] == 3 and {"gap", "se", "z"} <= set(x)
        assert x["z"] > 2.0  # se > 0: logits no client moved decide nothing
    # every derived choice carries its margin; genotype.json and inspect report them
    genotype = Genotype.from_dict(a.spec["genotype"])
    for cell in a.spec["genotype"].values():
        if isinstance(cell, dict):
            for node in cell["nodes"]:
                assert "margin_z" in node and "undecided" in node
                assert all("margin_z" in x and "undecided" in x for x in node["inputs"])
    assert json.loads((runs[1] / "genotype.json").read_text()) == a.spec["genotype"]
    assert main(["inspect", str(runs[1]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["undecided"] == (genotype.undecided or None)
    assert main(["inspect", str(runs[1])]) == 0
    out = capsys.readouterr().out
    assert all(line in out for line in genotype.undecided)
    assert ("undecided   " in out) == bool(genotype.undecided)


def test_resuming_from_round_2_is_bit_identical(runs, tmp_path):
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copy(runs[1] / "config.yaml", run)
    shutil.copy(runs[1] / "round_00002.h5", run)
    res = launch(1, ["--resume", str(run)], timeout=240)
    assert res.returncode == 0, res.stderr
    a, b = read_checkpoint(runs[1] / "round_00005.h5"), read_checkpoint(run / "round_00005.h5")
    assert a.spec == b.spec and list(a.state) == list(b.state)
    for part in ("state", "server_state"):
        sa, sb = getattr(a, part), getattr(b, part)
        assert list(sa) == list(sb)
        for k, v in sa.items():
            assert torch.equal(v, sb[k]), (part, k)
    for k, v in a.metrics.items():
        if not k.endswith("_time"):
            np.testing.assert_array_equal(v, b.metrics[k], err_msg=k)
