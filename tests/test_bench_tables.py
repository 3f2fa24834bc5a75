"""bench/tables.py's procedure (issue 20) with the runs faked: which configurations run on
which seeds and settings, what is chosen, and what the run cache reuses."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tables(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "bench" / "tables.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_tables"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_tables", None)


def fake_run_one(calls):
    """Accuracy from the overrides, so the chosen configuration is known by hand: val_acc =
    lr, test_acc = lr / 2, personal_acc = 1 - lr; seed and setting add small offsets."""

    def run_one(cfg, overrides, ranks, out, target):
        calls.append((cfg, dict(overrides)))
        out.mkdir(parents=True)
        lr = float(overrides.get("algorithm.lr", 0.5))
        bump = 0.001 * overrides["run.seed"] + (0.01 if "partition.alpha" in overrides else 0)
        return {
            "seed": overrides["run.seed"],
            "rounds": 4,
            "test_acc": lr / 2 + bump,
            "val_acc": lr + bump,
            "personal_acc": 1 - lr + bump,
            "method_time": 10.0 * lr,
            "eval_time": 1.0,
            "wall": 0.1,
            "stopped_early": False,
            "command": f"fednas-mpi {cfg} {sorted(overrides.items())}",
        }

    return run_one


PROTO = {
    "metric": "global",
    "common": {"run.rounds": 4},
    "settings": {"a": {}, "b": {"partition.alpha": 0.3}},
    "methods": {
        "m1": {"config": "c1.yaml", "grid": [{"algorithm.lr": 0.1}, {"algorithm.lr": 0.3}]},
        "m2": {"config": "c2.yaml", "grid": [{"algorithm.lr": 0.2}, {"algorithm.lr": 0.05}]},
    },
}


def test_tuning_on_the_first_seed_and_setting_then_every_seed_and_setting(
    tables, tmp_path, monkeypatch
):
    calls = []
    monkeypatch.setattr(tables, "run_one", fake_run_one(calls))
    go = tables.Runner(tmp_path, 3, 1.0)
    doc = tables.run_table(PROTO, [0, 1, 2], go)
    # 2 tuning runs (setting a, seed 0) + the chosen one on (a: seeds 1, 2) and (b: 0, 1, 2)
    assert len(calls) == 2 * (2 + 5)
    m1, m2 = doc["methods"]["m1"], doc["methods"]["m2"]
    assert m1["chosen"] == 1 and m2["chosen"] == 0  # the higher val_acc
    for res, lr in ((m1, 0.3), (m2, 0.2)):
        for name, runs in res["settings"].items():
            assert [r["seed"] for r in runs] == [0, 1, 2]
            assert all(
                abs(r["val_acc"] - lr - 0.001 * r["seed"] - (name == "b") * 0.01) < 1e-12
                for r in runs
            )
    tuned = [
        o for c, o in calls if c == "c1.yaml" and o["run.seed"] == 0 and "partition.alpha" not in o
    ]
    assert [o["algorithm.lr"] for o in tuned] == [0.1, 0.3]
    assert not [o for c, o in calls if o.get("algorithm.lr") == 0.1 and o["run.seed"] != 0]
    doc.update(seeds=[0, 1, 2], ranks=3, runs=go.log, protocol=PROTO, time_base="m1")
    s = tables.summarise(doc)
    assert s["m1"]["b"]["acc"]["mean"] == pytest.approx(0.15 + 0.01 + 0.001)
    assert s["m1"]["a"]["acc"]["n"] == 3


def test_personal_tables_select_and_report_personal_accuracy(tables, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(tables, "run_one", fake_run_one(calls))
    proto = {**PROTO, "metric": "personal", "settings": None}
    doc = tables.run_table(proto, [0, 1], tables.Runner(tmp_path, 3, 1.0))
    # personal_acc = 1 - lr: the smaller step wins
    assert doc["methods"]["m1"]["chosen"] == 0 and doc["methods"]["m2"]["chosen"] == 1
    assert doc["report"] == doc["select"] == "personal_acc"


def test_the_run_cache_reuses_identical_runs_across_tables(tables, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(tables, "run_one", fake_run_one(calls))
    tables.run_table(PROTO, [0, 1], tables.Runner(tmp_path, 3, 1.0))
    first = len(calls)
    # a second table with one of the methods and the first setting only: nothing runs again
    other = {**PROTO, "settings": {"a": {}}, "methods": {"m2": PROTO["methods"]["m2"]}}
    go = tables.Runner(tmp_path, 3, 1.0)
    doc = tables.run_table(other, [0, 1], go)
    assert len(calls) == first and all(r["reused"] for r in go.log)
    assert doc["methods"]["m2"]["chosen"] == 0
    # an interrupted run (directory without result.json) runs again from scratch
    key_dir = Path(go.log[0]["run_dir"])
    (key_dir / "result.json").unlink()
    (key_dir / "stale.h5").write_text("x")
    tables.run_table(other, [0, 1], tables.Runner(tmp_path, 3, 1.0))
    assert len(calls) == first + 1 and not (key_dir / "stale.h5").exists()
    assert json.loads((key_dir / "result.json").read_text())["seed"] == 0


def test_the_random_baseline_is_tuned_once_and_sampled_on_every_setting(
    tables, tmp_path, monkeypatch
):
    calls = []
    monkeypatch.setattr(tables, "run_one", fake_run_one(calls))
    rnd = {
        "config": "rnd.yaml",
        "samples": 3,
        "grid": [{"algorithm.lr": 0.4}, {"algorithm.lr": 0.1}],
    }
    go = tables.Runner(tmp_path, 3, 1.0)
    doc = tables.run_table({**PROTO, "random": rnd}, [0, 1], go)
    ran = [o for c, o in calls if c == "rnd.yaml"]
    # 2 tuning runs (genotype 0, seed 0, first setting), then genotypes 1, 2 there and
    # 0, 1, 2 on the second setting, all with the chosen step; seeds taken in turn
    assert len(ran) == 2 + 2 + 3
    assert doc["random"]["chosen"] == 0
    assert all(o["algorithm.lr"] == 0.4 for o in ran[2:])
    b = doc["random"]["settings"]["b"]
    assert [r["seed"] for r in b] == [0, 1, 0]
    assert [o["algorithm.random_nas.genotype_seed"] for o in ran[4:]] == [0, 1, 2]
    assert all("partition.alpha" in o for o in ran[4:])
    doc.update(seeds=[0, 1], ranks=3, runs=go.log, protocol=PROTO, time_base="m1")
    s = tables.summarise(doc)
    # random test_acc = 0.2 + small offsets; m1's (0.15 + ...) is below it, on both settings
    assert s["m1"]["a"]["beats_random"] == 0 and s["m1"]["b"]["beats_random"] == 0
    assert s["random"]["b"]["acc"]["n"] == 3
    doc["summary"], doc["select"] = s, "val_acc"
    args = type("Args", (), {"protocol": "p.yaml", "ranks": 3})()
    text = tables.markdown(doc, {**PROTO, "random": rnd}, args)
    assert "| random genotypes (3 samples, whole round cap)" in text
    assert "(0 of 2 > random)" in text and text.count("fednas-mpi rnd.yaml") == 7


def test_unequal_tuning_budgets_are_refused(tables, tmp_path):
    proto = {**PROTO, "methods": {**PROTO["methods"], "m3": {"config": "c3", "grid": [{}]}}}
    with pytest.raises(SystemExit, match="same tuning budget"):
        tables.run_table(proto, [0], tables.Runner(tmp_path, 3, 1.0))


def test_the_table_protocols_load_and_share_table2s_runs():
    """Tables 1, 4 and 5 name FedMetaNAS (and FedNAS) with Table 2's config, grid and
    common overrides, so the same runs stand behind the same cells."""
    import yaml

    protos = {
        p.stem: yaml.safe_load(p.read_text())
        for p in (ROOT / "bench/protocols/tables").glob("*.yaml")
    }
    assert sorted(protos) == ["table1", "table2", "table2_long", "table4", "table5"]
    t2 = protos["table2"]
    for name in ("table1", "table4", "table5"):
        proto = protos[name]
        assert proto["common"] == t2["common"], name
        budgets = {len(m["grid"]) for m in proto["methods"].values()}
        assert budgets == {2}, name
        for method in set(proto["methods"]) & set(t2["methods"]):
            assert proto["methods"][method] == t2["methods"][method], (name, method)
    for name in ("table1", "table4", "table5"):
        assert protos[name]["random"] == t2["random"], name
    long = protos["table2_long"]
    assert long["common"]["run.rounds"] == 2 * t2["common"]["run.rounds"]
    assert list(long["methods"]) == list(t2["methods"]) and long["random"] == t2["random"]
    assert list(protos["table4"]["settings"])[0] == "dir0.1"
    assert protos["table4"]["settings"]["dir0.1"] == {}
    assert protos["table5"]["metric"] == "personal"


def test_a_cached_run_of_an_edited_config_runs_again(tables, tmp_path, monkeypatch):
    from fednas_mpi.config import load, to_yaml

    cfg = "configs/cpu/digits/fedavg.yaml"
    over = {"run.rounds": 4, "run.seed": 0}
    calls = []
    monkeypatch.setattr(tables, "run_one", fake_run_one(calls))
    go = tables.Runner(tmp_path, 3, 1.0)
    go("t", cfg, over)
    out = go.run_dir(cfg, over)
    # the run stored the config it ran: as resolved now, nothing is stale
    (out / "config.yaml").write_text(to_yaml(load(ROOT / cfg, ["run.rounds=4", "run.seed=0"])))
    assert tables.stale_keys(cfg, over, out) == []
    go("t", cfg, over)
    assert len(calls) == 1 and go.log[-1]["reused"]
    # the same path and overrides, but the file's learning rate was another when it ran
    old = load(ROOT / cfg, ["run.rounds=4", "run.seed=0", "algorithm.lr=0.777"])
    (out / "config.yaml").write_text(to_yaml(old))
    assert tables.stale_keys(cfg, over, out) == ["algorithm.lr"]
    monkeypatch.setattr(tables, "run_one", fake_run_one(calls))
    go("t", cfg, over)
    assert len(calls) == 2 and not go.log[-1]["reused"]
