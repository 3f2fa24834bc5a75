"""``derive_rule: perturbation`` end to end under mpirun, for FedMetaNAS and FedNAS: -n 1 and
-n 2 agree (derived spec with every choice's perturbation log, state, metrics), the log
reaches genotype.json, and FedMetaNAS resumed from the checkpoint before the derivation
round gives the uninterrupted run's final round bit for bit."""

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

CONFIGS = {
    "fedmetanas": darts_e2e_config(
        "pt_fedmetanas",
        3,
        "fedmetanas",
        {"derive_rule": "perturbation", "final_round": 2, "settle_rounds": 0, "prune_gap": 0.3},
    ),
    "fednas": darts_e2e_config(
        "pt_fednas", 3, "fednas", {"derive_rule": "perturbation", "search_rounds": 2}
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {
        m: run_per_rank_count(tmp_path_factory.mktemp(f"pt_{m}"), cfg, ranks=(1, 2))
        for m, cfg in CONFIGS.items()
    }


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_rank_counts_agree_and_the_choices_are_logged(runs, method, capsys):
    dirs = runs[method]
    a = read_checkpoint(list_checkpoints(dirs[1])[-1][1])
    b = read_checkpoint(list_checkpoints(dirs[2])[-1][1])
    assert a.round == b.round == 3 and a.spec == b.spec and a.stages == b.stages
    genotype = Genotype.from_dict(a.spec["genotype"])
    for part in ("state", "server_state"):
        sa, sb = getattr(a, part), getattr(b, part)
        assert list(sa) == list(sb)
        assert not any(k.startswith("pt.") for k in sa)
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-5, msg=f"{part} {k}")
    for k in ("global_acc", "train_loss", "pt_base_acc", "pt_drop_mean", "pt_same_as_logits"):
        np.testing.assert_allclose(a.metrics[k], b.metrics[k], atol=1e-5, err_msg=k)
    # scored and derived in round 2 only
    assert np.isnan(a.metrics["pt_base_acc"][[0, 2]]).all()
    assert 0.0 <= a.metrics["pt_base_acc"][1] <= 1.0
    chosen = [x for cell in genotype.cells.values() for n in cell.nodes for x in n.inputs]
    assert chosen and all(set(x.perturbation) >= {"drop", "runner_up"} for x in chosen)
    on_disk = json.loads((dirs[1] / "genotype.json").read_text())
    assert on_disk == a.spec["genotype"]
    assert "perturbation" in on_disk["normal"]["nodes"][0]["inputs"][0]
    # inspect lists every choice with its drop and the runner-up's
    assert main(["inspect", str(dirs[1]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["by_perturbation"] == genotype.by_perturbation
    assert len(genotype.by_perturbation) >= len(chosen)
    assert main(["inspect", str(dirs[1])]) == 0
    out = capsys.readouterr().out
    assert "perturbed   " in out and all(line in out for line in genotype.by_perturbation)


def test_fedmetanas_resumes_the_derivation_round_bit_for_bit(runs, tmp_path):
    dirs = runs["fedmetanas"]
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copy(dirs[1] / "config.yaml", run)
    shutil.copy(dirs[1] / "round_00001.h5", run)
    res = launch(1, ["--resume", str(run)], timeout=240)
    assert res.returncode == 0, res.stderr
    a, b = read_checkpoint(dirs[1] / "round_00003.h5"), read_checkpoint(run / "round_00003.h5")
    assert a.spec == b.spec
    for part in ("state", "server_state"):
        sa, sb = getattr(a, part), getattr(b, part)
        assert list(sa) == list(sb)
        for k, v in sa.items():
            assert torch.equal(v, sb[k]), (part, k)
    for k, v in a.metrics.items():
        if not k.endswith("_time"):
            np.testing.assert_array_equal(v, b.metrics[k], err_msg=k)
