"""The paper configs' schedules scale to a 6-round run (their round counts are shares of
run.rounds): FedMetaNAS goes through warm-up, search with soft pruning, derivation and the
derived stage; FedNAS through search, derivation and retraining. Synthetic CIFAR-10 in the
real on-disk format; the paper configs with the federation and the DARTS network shrunk
through --set (so a run takes seconds), the schedules untouched but for FedMetaNAS's
documented short-run override (README, "Paper scale").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fednas_mpi.algorithms import DataInfo, get_algorithm
from fednas_mpi.config import load
from fednas_mpi.harness import ForkCLI
from fednas_mpi.harness.datafiles import write_cifar10
from fednas_mpi.store import list_checkpoints, read_checkpoint

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper" / "cifar10"

# The short-run override the README documents: at 6 rounds the paper's final_round (0.3)
# is round 2, which leaves no search round between the warm-up and the derivation.
SHORT_RUN = {"fedmetanas": ["algorithm.fedmetanas.final_round=0.5"], "fednas": []}

TINY = [
    "runtime.device=cpu",
    "partition.num_clients=4",
    "partition.train_size=4",
    "partition.eval_size=4",
    "federation.clients_per_round=2",
    "algorithm.local_epochs=1",
    "algorithm.batch_size=4",
    # one normal cell (layers 3: reductions at 1 and 2), so every logit is trained
    "model.darts.init_channels=4",
    "model.darts.layers=3",
    "model.darts.nodes=2",
    "run.eval_every=2",
    "run.eval_subset=10",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("short")
    write_cifar10(root / "data", per_batch=8, n_test=20)
    cli, out = ForkCLI(), {}
    try:
        for method in ("fedmetanas", "fednas"):
            sets = [f"data.root={root / 'data'}", "run.rounds=6", *TINY, *SHORT_RUN[method]]
            args = [PAPER / f"{method}.yaml", "--out", root / method]
            for s in sets:
                args += ["--set", s]
            res = cli.run(args, cwd=root)
            assert res.returncode == 0, res.stdout + res.stderr
            out[method] = root / method
    finally:
        cli.close()
    return out


def checkpoints(run_dir: Path):
    return [read_checkpoint(p) for _, p in list_checkpoints(run_dir)]


def arch_tensors(state) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(("alpha_", "beta_"))}


def test_fedmetanas_paper_schedule_in_six_rounds(runs):
    run = runs["fedmetanas"]
    f = load(run / "config.yaml").algorithm.fedmetanas
    # resolved from the paper's shares: warm-up 0.05, pruning from 0.1 every 0.01, and the
    # override's derivation after round 3 of 6
    assert (f.arch_warmup_rounds, f.prune_start, f.prune_every, f.final_round) == (1, 1, 1, 3)
    cks = checkpoints(run)
    last = cks[-1]
    assert [c.round for c in cks] == [1, 2, 3, 4, 5, 6]
    assert last.stages == ["search"] * 3 + ["derived"] * 3

    # warm-up: round 1 leaves the logits as initialised; the search (round 2) moves them
    cfg = load(run / "config.yaml")
    init = get_algorithm("fedmetanas")(cfg, DataInfo((3, 32, 32), 10)).init_global().state
    after1, after2 = arch_tensors(cks[0].state), arch_tensors(cks[1].state)
    assert all(torch.equal(after1[k], init[k]) for k in after1)
    assert any(not torch.equal(after2[k], after1[k]) for k in after1)

    # soft pruning ran after round 2 (its gap is recorded only when it runs), not in the
    # warm-up, the derivation round or after
    gaps = last.metrics["prune_gap"]
    assert math.isfinite(gaps[1]) and gaps[1] > 0
    assert all(math.isnan(g) for i, g in enumerate(gaps) if i != 1)

    # the derivation after round 3: one op per edge from then on, the genotype written
    ops = last.metrics["ops_alive"]
    assert ops[0] == ops[1] > ops[2] == ops[5]
    assert last.metrics["acc_before_prune"][2] >= 0  # the derivation's before/after pair
    assert json.loads((run / "genotype.json").read_text())
    # the derived stage trained and was evaluated on the whole test set at the end
    assert all(math.isfinite(x) for x in last.metrics["train_loss"][3:])
    assert math.isfinite(last.metrics["global_acc"][5])


def test_fednas_paper_schedule_in_six_rounds(runs):
    run = runs["fednas"]
    assert load(run / "config.yaml").algorithm.fednas.search_rounds == 3  # 0.5 of 6
    last = checkpoints(run)[-1]
    assert last.stages == ["search"] * 3 + ["retrain"] * 3
    ops = last.metrics["ops_alive"]
    assert ops[0] == ops[1] > ops[2] == ops[5]  # hard pruning after round 3
    assert json.loads((run / "genotype.json").read_text())
    assert all(math.isfinite(x) for x in last.metrics["train_loss"])
    assert math.isfinite(last.metrics["global_acc"][5])
    # every round's time components are there for the GPU check's per-stage table
    for part in ("compute_time", "aggregate_time", "eval_time", "round_time"):
        assert all(math.isfinite(x) for x in last.metrics[part]), part
