"""bench/project_paper.py: the projected hours of the paper's protocol are plain arithmetic on
the measured times, checked here on a hand-computed example."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def proj():
    spec = importlib.util.spec_from_file_location(
        "bench_project", ROOT / "bench" / "project_paper.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_project"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_project", None)


STEP = {"0.0": 0.1, "0.5": 0.06, "0.9": 0.03, "derived": 0.02}


def test_fedmetanas_by_hand(proj):
    """10 rounds, warm-up 1, derivation after round 4, 100 steps an update, 5 clients on 8
    GPUs (one wave), 0.5 s overhead a round, evaluation every 5 rounds (2 s on the subset,
    4 s on the whole set).

    warm-up 1 x (100 x 0.1 + 0.5) = 10.5; search 3 rounds in thirds of one round each:
    (10 + 0.5) + (6 + 0.5) + (3 + 0.5) = 20.5; derived 6 x (100 x 0.02 + 0.5) = 15;
    evaluations: round 5 on the subset (2), rounds 4 (derivation) and 10 (last) whole (8).
    Total 10.5 + 20.5 + 15 + 10 = 56 s."""
    p = proj.Protocol(rounds=10, eval_every=5)
    stages = proj.stages("fedmetanas", p, {"warmup": 1, "final": 4}, {"search": 100})
    res = proj.project(stages, STEP, p, eval_s=2, full_eval_s=4, overhead_s=0.5, derives_at=4)
    assert res["stages_s"] == pytest.approx(
        {
            "warmup": 10.5,
            "search 0% dead": 10.5,
            "search 50% dead": 6.5,
            "search 90% dead": 3.5,
            "derived": 15.0,
        }
    )
    assert res["eval_s"] == pytest.approx(10.0)
    assert res["total_s"] == pytest.approx(56.0)
    assert res["hours"] == pytest.approx(56.0 / 3600)


def test_fednas_by_hand(proj):
    """FedNAS: 4 search rounds at 0 % dead (200 steps an update), 6 retraining rounds of
    plain SGD: 5 epochs x ceil(600 / 64) = 50 steps of the derived network.

    search 4 x 200 x 0.1 = 80; retrain 6 x 50 x 0.02 = 6; no overhead or evaluation."""
    p = proj.Protocol(rounds=10)
    stages = proj.stages("fednas", p, {"search": 4}, {"search": 200})
    assert [(s.name, s.rounds, s.step, s.steps_per_update) for s in stages] == [
        ("search", 4, "0.0", 200),
        ("retrain", 6, "derived", 50),
    ]
    assert proj.project(stages, STEP, p)["total_s"] == pytest.approx(86.0)


def test_more_clients_than_gpus_run_in_waves(proj):
    p = proj.Protocol(rounds=1, clients_per_round=9, gpus=8)
    assert p.waves == 2
    stages = proj.stages("fednas", p, {"search": 1}, {"search": 10})
    assert proj.project(stages, STEP, p)["total_s"] == pytest.approx(2 * 10 * 0.1)


def test_evaluations_of_the_papers_protocol(proj):
    p = proj.Protocol()  # 1000 rounds, every 10th evaluated
    assert proj.evaluations(p, derives_at=300) == (98, 2)  # rounds 300 and 1000 whole
    assert proj.evaluations(p, derives_at=305) == (99, 2)
    assert proj.evaluations(p, derives_at=None) == (99, 1)


def test_steps_per_update_scale_to_the_protocols_minibatches(proj):
    p = proj.Protocol()  # 5 epochs x 10 batches of 64 = 50 minibatches
    measured = {
        "update_s": 3.0,
        "step_s": {"0.0": 0.1},
        "local_epochs": 1,
        "images": 16,
        "batch": 8,
    }
    # 30 step-equivalents over 1 x 2 minibatches: 15 a minibatch, 750 for 50
    assert proj.steps_per_update(measured, p) == {"search": pytest.approx(750.0)}
    at_paper = dict(measured, local_epochs=5, images=600, batch=64)
    assert proj.steps_per_update(at_paper, p) == {"search": pytest.approx(30.0)}


def test_projections_read_supernet_rows_per_path(proj):
    updates = {
        "methods": {
            "fednas": {
                "update_s": 20.0,
                "step_s": STEP,
                "local_epochs": 5,
                "images": 600,
                "batch": 64,
                "schedule": {"search": 500},
                "path": "kernels.supernet=auto",
            }
        }
    }
    rows = [
        {"config": "configs/paper/cifar10/fednas.yaml", "dead": d, "reference": {"median_ms": ms}}
        for d, ms in ((0.0, 200.0), (0.5, 120.0), (0.9, 60.0), ("derived", 40.0))
    ]
    rows.append({"config": "configs/paper/cifar10/fedmetanas.yaml", "dead": 0.0})
    out = proj.projections(updates, {}, {"steps": rows}, proj.Protocol())
    assert [r["steps_from"] for r in out] == [
        "kernels.supernet=auto (client-update run)",
        "reference (supernet.py)",
    ]
    # 200 step-equivalents: 500 x 200 x 0.1 + 500 x 50 x 0.02 = 10,500 s; reference 2x each
    assert out[0]["total_s"] == pytest.approx(10_500.0)
    assert out[1]["total_s"] == pytest.approx(500 * 200 * 0.2 + 500 * 50 * 0.04)
