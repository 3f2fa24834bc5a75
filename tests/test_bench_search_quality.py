"""bench/search_quality.py (issue 25): the statistics on hand-made numbers, and the
procedure with the runs faked - what is tuned on which data, which cell retrains on which
seed (paired with the random cells), how the search ladder scales the schedules, and
what the summary places where."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def sq(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_sq", ROOT / "bench" / "search_quality.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_sq"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_sq", None)


def test_percentile_counts_the_cells_below_and_half_the_ties(sq):
    pop = [0.1, 0.2, 0.3, 0.4]
    assert sq.percentile(0.25, pop) == 50.0
    assert sq.percentile(0.3, pop) == 62.5  # 2 below, 1 tie
    assert sq.percentile(0.05, pop) == 0.0 and sq.percentile(0.9, pop) == 100.0
    assert np.isnan(sq.percentile(float("nan"), pop))


def test_kendall_tau_on_hand_counted_pairs(sq):
    assert sq.kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert sq.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # one swapped pair of 6: (5 - 1) / 6
    assert sq.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tau-b with one tie in each ranking: 4 concordant, 0 discordant, (4 / sqrt(5 * 5))
    assert sq.kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        sq.kendall_tau([1, 2], [1, 2, 3])


def test_seed_agreement_is_the_mean_tau_over_seed_pairs(sq):
    acc = np.array([[1, 1, 4], [2, 2, 3], [3, 3, 2], [4, 4, 1]], float)  # cells x seeds
    # seeds 0-1 agree (1), 0-2 and 1-2 are reversed (-1 each)
    assert sq.seed_agreement(acc) == pytest.approx(-1 / 3)


def test_quartiles_and_ladder_scaling(sq):
    q = sq.quartiles([1, 2, 3, 4, 5])
    assert (q["q1"], q["median"], q["q3"], q["n"]) == (2.0, 3.0, 4.0, 5)
    assert sq.scaled({"a": 6, "b": 2, "c": 3}, 24) == {"a": 12, "b": 4, "c": 6}
    assert sq.scaled({"a": 6, "b": 1}, 12) == {"a": 6, "b": 1}


class FakeGo:
    """Runs nothing: val_acc from the learning rate and genotype seed, so what is chosen is
    known by hand; a published or searched cell's accuracy from its name."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def __call__(self, tag, cfg, over):
        self.calls.append((tag, cfg, dict(over)))
        s = over["run.seed"]
        if "random_nas" in cfg:
            src = over.get("algorithm.random_nas.genotype")
            if src is None:
                g = over["algorithm.random_nas.genotype_seed"]
                val = 0.5 + 0.01 * g + 0.001 * s - abs(over["algorithm.random_nas.lr"] - 0.05)
            elif src == "darts_v2":
                val = 0.9
            else:  # a searched cell: its run directory
                val = 0.505 if "fednas" in src else 0.1
            return {"val_acc": val, "test_acc": val - 0.1, "genotype": f"cell of {tag}"}
        run_dir = self.root / tag
        run_dir.mkdir(parents=True, exist_ok=True)
        return {
            "val_acc": 0.3,
            "test_acc": 0.25,
            "method_time": 10.0,
            "method_time_per_stage": {"search": 6.0, "retrain": 4.0},
            "run_dir": str(run_dir),
            "genotype": "",
        }


PROTO = {
    "space": {"model.darts.nodes": 4, "model.darts.input_k": 2},
    "common": {"algorithm.local_epochs": 1},
    "recipe": {
        "overrides": {"run.rounds": 12, "run.patience": 0},
        "lr_grid": [0.025, 0.05, 0.1],
        "tune_genotypes": [0, 1],
    },
    "published": ["darts_v2"],
    "search": {"run.patience": 0},
    "methods": {
        "fednas": {
            "overrides": {"algorithm.fednas.arch_lr": 0.1},
            "scale": {"algorithm.fednas.search_rounds": 6},
        },
        "fedmetanas": {
            "overrides": {},
            "scale": {"algorithm.fedmetanas.final_round": 6, "algorithm.fedmetanas.prune_start": 3},
            "ladder": [12],
        },
    },
    "settings": {
        "a": {
            "dataset": "digits",
            "overrides": {"partition.alpha": 0.1},
            "random_cells": 4,
            "ladder": [12, 24],
            "eval_budgets": [24, {"L6": {"model.darts.layers": 6}}],
        }
    },
}


def test_the_procedure_tunes_once_pairs_seeds_and_places_every_cell(sq, tmp_path):
    go = FakeGo(tmp_path)
    seeds = [0, 1, 2]
    raw = sq.run_setting_phases(PROTO, ["a"], seeds, go, jobs=2)
    calls = {tag: (cfg, over) for tag, cfg, over in go.calls}
    assert len(calls) == len(go.calls)  # every run once
    # 1. tuning: every lr x tuning genotype, first seed only; lr 0.05 has the best mean val
    tune = [o for t, (c, o) in calls.items() if "-recipe-" in t]
    assert len(tune) == 6 and {o["run.seed"] for o in tune} == {0}
    assert raw["a"]["lr"] == 0.05
    retrains = [o for t, (c, o) in calls.items() if "random_nas" in c and "-recipe-" not in t]
    assert all(o["algorithm.random_nas.lr"] == 0.05 for o in retrains)
    assert all(o["model.darts.nodes"] == 4 and o["partition.alpha"] == 0.1 for o in retrains)
    # 2. searches: fednas on both ladder rungs with its schedule scaled, fedmetanas on 12 only
    searches = {t: o for t, (c, o) in calls.items() if "random_nas" not in c}
    assert sorted(searches) == sorted(
        [f"a-fednas-R{r}-s{s}" for r in (12, 24) for s in seeds]
        + [f"a-fedmetanas-R12-s{s}" for s in seeds]
    )
    assert searches["a-fednas-R24-s1"]["algorithm.fednas.search_rounds"] == 12
    assert searches["a-fednas-R24-s1"]["run.rounds"] == 24
    assert searches["a-fedmetanas-R12-s2"]["algorithm.fedmetanas.prune_start"] == 3
    # 3. retrains: 4 random cells and darts_v2 on every seed at both budgets; each searched
    # cell (from its own search run) on every seed at the recipe's budget: paired by seed
    for b in (12, 24):
        for s in seeds:
            for g in range(4):
                o = calls[f"a-random-g{g}-E{b}-s{s}"][1]
                assert (
                    o["run.seed"],
                    o["run.rounds"],
                    o["algorithm.random_nas.genotype_seed"],
                ) == (s, b, g)
            assert calls[f"a-darts_v2-E{b}-s{s}"][1]["algorithm.random_nas.genotype"] == "darts_v2"
    for ss in seeds:
        for s in seeds:
            o = calls[f"a-fednas-R24-s{ss}-retrain-E12-s{s}"][1]
            assert o["algorithm.random_nas.genotype"] == str(tmp_path / f"a-fednas-R24-s{ss}")
            assert o["run.seed"] == s and o["run.rounds"] == 12
    assert not any("retrain-E24" in t for t in calls)  # searched cells: the recipe's budget

    doc = sq.summarise(PROTO, raw, seeds)["a"]
    b12 = doc["budgets"]["E12"]
    # random cells' seed means: 0.5 + 0.01 g + 0.001 (seed mean 1) -> 0.501, .511, .521, .531
    np.testing.assert_allclose(b12["random"]["val_acc"]["per_cell"], [0.501, 0.511, 0.521, 0.531])
    assert b12["random"]["val_acc"]["kendall_tau"] == 1.0  # same order on every seed
    assert b12["published"]["darts_v2"]["val_acc"]["percentile"] == 100.0
    e = b12["searched"]["fednas-R12-s0"]
    assert e["val_acc"]["percentile"] == 25.0  # 0.505: above one random cell of four
    assert e["search_time"] == 6.0 and e["end_to_end_test_acc"] == 0.25
    assert b12["searched"]["fedmetanas-R12-s1"]["val_acc"]["percentile"] == 0.0
    rows = sq.method_rows(b12)
    assert rows[("fednas", 24)]["pct_val"] == 25.0 and rows[("fednas", 24)]["n"] == 3
    assert list(doc["budgets"]) == ["E12", "E24", "L6"] and not doc["budgets"]["E24"]["searched"]
    for s in seeds:  # a named budget: the recipe with its overrides
        o = calls[f"a-darts_v2-L6-s{s}"][1]
        assert (o["model.darts.layers"], o["run.rounds"]) == (6, 12)


def test_single_path_searches_are_placed_by_darts_rule_on_their_final_logits(
    sq, tmp_path, monkeypatch
):
    import torch

    from fednas_mpi.nas import PRIMITIVES, CellSpace

    space = CellSpace(4, 2)
    # logits that make sep_conv_3x3 strongest on inputs 0 and 1 of every node
    alpha = torch.zeros(space.num_edges, len(PRIMITIVES))
    for j in range(4):
        alpha[space.edge(j, 0), PRIMITIVES.index("sep_conv_3x3")] = 3.0
        alpha[space.edge(j, 1), PRIMITIVES.index("dil_conv_5x5")] = 2.0

    class Ck:
        config_yaml = "model: {darts: {}}"
        state = {"alpha_normal": alpha, "alpha_reduce": alpha.flip(1)}

    import fednas_mpi.store as store

    monkeypatch.setattr(store, "list_checkpoints", lambda d: [(1, "x")])
    monkeypatch.setattr(store, "read_checkpoint", lambda p: Ck)
    src = sq.searched_genotype("fedrlnas", {"run_dir": str(tmp_path)}, tmp_path / "g.json", 4, 2)
    from fednas_mpi.nas.published import genotype_spec, load_genotype

    g, _ = load_genotype(src)
    assert g["normal"]["nodes"][3]["inputs"] == [
        {
            "op": "sep_conv_3x3",
            "input": 0,
            "p_op": pytest.approx(float(torch.softmax(alpha[space.edge(3, 0)], 0).max()), abs=1e-4),
        },
        {
            "op": "dil_conv_5x5",
            "input": 1,
            "p_op": pytest.approx(float(torch.softmax(alpha[space.edge(3, 1)], 0).max()), abs=1e-4),
        },
    ]
    genotype_spec(space, g)  # fits the protocol's space
    # fednas and fedmetanas: the run directory itself (its genotype.json)
    assert sq.searched_genotype("fednas", {"run_dir": "/r"}, tmp_path / "x.json", 4, 2) == "/r"


def test_commands_mode_plans_each_phase_then_reports_from_finished_runs(sq, tmp_path, monkeypatch):
    """--commands: phase 1 (recipe tuning, searches), then phase 2 (retrains) come out as
    lines for the SLURM array; runs another launcher finished are read back, not planned."""
    fake = FakeGo(tmp_path / "fake")
    done: dict[str, dict] = {}  # run directory -> what the "array task" produced

    def finish(lines):
        for line in lines:
            out, cfg, sets = line.split("\t")
            over = {}
            parts = sets.split()
            for flag, kv in zip(parts[::2], parts[1::2]):
                assert flag == "--set"
                k, v = kv.split("=", 1)
                over[k] = sq.yaml.safe_load(v)
            Path(out).mkdir(parents=True)
            r = fake(Path(out).name, cfg, over)
            r.update(run_dir=out, method_time=1.0, method_time_per_stage={"search": 1.0})
            done[out] = r

    monkeypatch.setattr(sq, "finished", lambda out: str(out) in done)
    monkeypatch.setattr(sq, "read_run", lambda cfg, over, ranks, out, target: dict(done[str(out)]))
    proto = {
        **PROTO,
        "settings": {"a": {**PROTO["settings"]["a"], "ladder": [12], "eval_budgets": []}},
    }
    seeds = [0, 1]
    plans = []
    for _ in range(2):
        go = sq.PlanRunner(tmp_path / "runs", 9)
        (tmp_path / "runs").mkdir(exist_ok=True)
        with pytest.raises(sq.Pending):
            sq.run_setting_phases(proto, ["a"], seeds, go, 1)
        plans.append(sorted(go.plan))
        finish(go.plan)
    # phase 1: 3 lrs x 2 tuning genotypes + 2 methods x 2 seeds; phase 2: (4 random + 1
    # published + 4 searched) cells x 2 seeds, less random cells 0 and 1 on seed 0 at the
    # chosen rate: those are tuning runs, already done
    assert [len(p) for p in plans] == [6 + 4, 9 * 2 - 2]
    assert all(str(ROOT / "configs/cpu/digits/") in line.split("\t")[1] for line in plans[0])
    assert all("random_nas.yaml" in line.split("\t")[1] for line in plans[1])
    assert any("--set algorithm.random_nas.genotype=darts_v2" in line for line in plans[1])
    go = sq.PlanRunner(tmp_path / "runs", 9)
    raw = sq.run_setting_phases(proto, ["a"], seeds, go, 1)  # everything has finished
    assert not go.plan and raw["a"]["lr"] == 0.05
    assert sq.summarise(proto, raw, seeds)["a"]["budgets"]["E12"]["random"]["val_acc"]["n"] == 4


def test_a_variant_runs_its_methods_config_with_its_own_overrides(sq, tmp_path):
    proto = {
        **PROTO,
        "methods": {
            "fednas": PROTO["methods"]["fednas"],
            "fednas_server": {
                "config": "fednas",
                "overrides": {"algorithm.fednas.arch_update": "server"},
                "scale": {"algorithm.fednas.search_rounds": 6},
            },
        },
        "settings": {"a": {**PROTO["settings"]["a"], "ladder": [12], "eval_budgets": []}},
    }
    go = FakeGo(tmp_path)
    raw = sq.run_setting_phases(proto, ["a"], [0], go, jobs=1)
    calls = {tag: (cfg, over) for tag, cfg, over in go.calls}
    cfg, over = calls["a-fednas_server-R12-s0"]
    assert cfg == "configs/cpu/digits/fednas.yaml"
    assert over["algorithm.fednas.arch_update"] == "server"
    assert "algorithm.fednas.arch_update" not in calls["a-fednas-R12-s0"][1]
    src = calls["a-fednas_server-R12-s0-retrain-E12-s0"][1]["algorithm.random_nas.genotype"]
    assert src == str(tmp_path / "a-fednas_server-R12-s0")  # its own search's genotype.json
    rows = sq.method_rows(sq.summarise(proto, raw, [0])["a"]["budgets"]["E12"])
    assert set(rows) == {("fednas", 12), ("fednas_server", 12)}


def test_parameter_free_share_per_cell_type(sq):
    g = (
        "normal: s2 = sep_conv_3x3(s0) + skip_connect(s1); s3 = max_pool_3x3(s0) + "
        "dil_conv_5x5(s2)\nreduce: s2 = avg_pool_3x3(s0) + max_pool_3x3(s1)"
    )
    assert sq.param_free_share(g) == {"normal": 0.5, "reduce": 1.0}


def test_screening_retrains_a_searched_cell_on_its_own_seed_only(sq, tmp_path):
    proto = {
        **PROTO,
        "searched_retrain": "same_seed",
        "methods": {"fednas": PROTO["methods"]["fednas"]},
        "settings": {"a": {**PROTO["settings"]["a"], "ladder": [12], "eval_budgets": []}},
    }
    go = FakeGo(tmp_path)
    seeds = [0, 1, 2]
    raw = sq.run_setting_phases(proto, ["a"], seeds, go, jobs=1)
    retrains = sorted(t for t, _, _ in go.calls if "-retrain-" in t)
    assert retrains == [f"a-fednas-R12-s{s}-retrain-E12-s{s}" for s in seeds]
    b12 = sq.summarise(proto, raw, seeds)["a"]["budgets"]["E12"]
    for s in seeds:
        e = b12["searched"][f"fednas-R12-s{s}"]
        # 0.505 against the seed's random cells 0.50 + 0.001 s, 0.51 + ...: above one of four
        assert e["val_acc"]["per_seed"] == [0.505] and e["val_acc"]["percentile"] == 25.0
