"""fednas-mpi inspect / compare / plot on real small runs, checked against h5py."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import TINY, launch, write_config

from fednas_mpi.cli import main
from fednas_mpi.report import group_settings, load_run
from fednas_mpi.report.plots import SIZES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

SHARED = {
    "partition": {"scheme": "dirichlet", "alpha": 0.5, "num_clients": 6, "min_train": 8},
    "federation": {"clients_per_round": 3},
    "run": {"name": "r", "seed": 7, "rounds": 3},
}
NAS = {
    "model": {"name": "darts", "darts": {"init_channels": 4, "layers": 2, "nodes": 2}},
    "algorithm": {
        "name": "fedmetanas",
        "local_epochs": 1,
        "batch_size": 8,
        "fedmetanas": {"tasks_per_epoch": 2, "temperature_end": 0.05, "prune_gap": 0.05},
    },
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One FedMetaNAS run and two FedAvg seeds of one setting (each made once), on
    helpers.TINY's data and model."""
    root = tmp_path_factory.mktemp("report")
    cfg_avg = write_config(root / "avg.yaml", **SHARED)
    # NAS replaces TINY's model and algorithm: the CNN's keys and algorithm.lr are not read
    cfg_nas = write_config(root / "nas.yaml", {**TINY, **SHARED, **NAS})
    jobs = {"nas": (cfg_nas, 7), "avg7": (cfg_avg, 7), "avg8": (cfg_avg, 8)}
    with ThreadPoolExecutor(2) as pool:  # two at a time: start-up overlaps with work
        results = {
            name: pool.submit(
                launch, 1, [str(cfg), "--out", str(root / name), "--set", f"run.seed={seed}"], 240
            )
            for name, (cfg, seed) in jobs.items()
        }
        for res in results.values():
            assert res.result().returncode == 0, res.result().stderr
    return {name: root / name for name in jobs}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def h5(run_dir: Path) -> dict:
    """The newest checkpoint's metrics, read with h5py only."""
    path = sorted(run_dir.glob("round_*.h5"))[-1]
    with h5py.File(path, "r") as f:
        return {
            "round": int(f.attrs["round"]),
            "planned": int(f.attrs["rounds_planned"]),
            "metrics": {k: f["metrics"][k][()] for k in f["metrics"] if k != "stage"},
            "stages": [s.decode() for s in f["metrics/stage"][()]],
            "clients": {k: f["client_metrics"][k][()] for k in f["client_metrics"]},
            "train_sizes": f["partition/train_sizes"][()],
            "spec": json.loads(f.attrs["spec"]),
            "world_size": int(f.attrs["world_size"]),
        }


def last_finite(v: np.ndarray) -> float:
    return float(v[np.isfinite(v)][-1])


# ------------------------------------------------------------------ inspect


def test_inspect_summary_shows_what_the_checkpoint_holds(runs, capsys):
    ref = h5(runs["nas"])
    code, out, err = run_cli(capsys, "inspect", str(runs["nas"]))
    assert code == 0 and err == ""
    acc = ref["metrics"]["global_acc"]
    assert f"final {100 * last_finite(acc):.2f} %" in out
    assert f"best {100 * np.nanmax(acc):.2f} %" in out
    assert f"complete: {ref['round']} of {ref['planned']} rounds" in out
    assert "fedmetanas on digits; Dirichlet(alpha=0.5), 6 clients, 3 clients per round" in out
    assert f"{100 * last_finite(ref['metrics']['local_acc']):.2f} %" in out
    assert f"{np.nansum(ref['metrics']['round_time']):.1f} s in rounds (search " in out
    assert f"ops alive {int(ref['metrics']['ops_alive'][-1])}" in out
    for line in ref["spec"]["genotype"]["text"].splitlines():
        assert line in out


def test_inspect_json_matches_h5py(runs, capsys):
    ref = h5(runs["nas"])
    code, out, _ = run_cli(capsys, "inspect", str(runs["nas"]), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == "fednas-mpi-inspect" and doc["schema_version"] == 1
    assert set(doc) == {"schema", "schema_version", "summary", "rounds", "clients"}
    s = doc["summary"]
    for key, kind in (
        ("method", str),
        ("dataset", str),
        ("rounds_done", int),
        ("rounds_planned", int),
        ("final_acc", float),
        ("best_acc", float),
        ("local_acc", float),
        ("time_total", float),
        ("time_per_stage", dict),
        ("time_parts", dict),
        ("ops_alive", float),
        ("genotype", dict),
        ("ranks", int),
        ("seed", int),
    ):
        assert isinstance(s[key], kind), key
    assert s["final_acc"] == last_finite(ref["metrics"]["global_acc"])
    assert s["time_per_stage"] == {"search": pytest.approx(np.nansum(ref["metrics"]["round_time"]))}
    assert s["genotype"] == ref["spec"]["genotype"] and s["ranks"] == ref["world_size"]
    assert [r["round"] for r in doc["rounds"]] == list(range(1, ref["round"] + 1))
    assert [r["stage"] for r in doc["rounds"]] == ref["stages"]
    for name, values in ref["metrics"].items():
        got = [r[name] for r in doc["rounds"]]
        assert got == [None if np.isnan(v) else float(v) for v in values], name
    clients = doc["clients"]
    assert [c["client"] for c in clients] == list(range(6))
    assert [c["train"] for c in clients] == ref["train_sizes"].tolist()
    weight = ref["clients"]["weight"]
    assert [c["sampled"] for c in clients] == np.isfinite(weight).sum(axis=0).tolist()
    for c in clients:
        col = ref["clients"]["local_acc"][:, c["client"]]
        assert c["local_acc"] == (last_finite(col) if np.isfinite(col).any() else None)


def test_inspect_round_and_client_tables(runs, capsys):
    ref = h5(runs["nas"])
    code, out, _ = run_cli(capsys, "inspect", str(runs["nas"]), "--rounds", "--clients")
    assert code == 0
    rounds = out.split("\nper round (")[1].split("\nper client")[0].splitlines()
    head = rounds[1].split()
    assert head[:3] == ["round", "stage", "global_acc"]
    body = [ln.split() for ln in rounds[3 : 3 + ref["round"]]]
    assert [float(b[2]) for b in body] == pytest.approx(ref["metrics"]["global_acc"], abs=6e-5)
    clients = out.split("\nper client:")[1].splitlines()
    assert clients[1].split()[:6] == ["client", "train", "eval", "classes", "sampled", "last_round"]
    assert len([ln for ln in clients[3:] if ln.strip()]) == 6


def test_inspect_csv_exports_exact_values(runs, capsys):
    ref = h5(runs["avg7"])
    code, out, _ = run_cli(capsys, "inspect", str(runs["avg7"]), "--rounds", "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == ref["round"]
    for name, values in ref["metrics"].items():
        assert [float(r[name]) if r[name] else np.nan for r in rows] == pytest.approx(
            values, nan_ok=True, rel=0, abs=0
        ), name
    code, out, _ = run_cli(capsys, "inspect", str(runs["avg7"]), "--csv")
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert row["method"] == "fedavg" and float(row["final_acc"]) == last_finite(
        ref["metrics"]["global_acc"]
    )
    assert row["time_stage_train"] and row["genotype_text"] == ""
    code, out, _ = run_cli(capsys, "inspect", str(runs["avg7"]), "--clients", "--csv")
    assert len(list(csv.DictReader(io.StringIO(out)))) == 6


# ------------------------------------------------------------------ compare


def test_compare_groups_seeds_and_reports_mean_and_std(runs, capsys):
    a7, a8, nas = h5(runs["avg7"]), h5(runs["avg8"]), h5(runs["nas"])
    args = [str(runs["avg7"]), str(runs["nas"]), str(runs["avg8"])]
    code, out, _ = run_cli(capsys, "compare", *args)
    assert code == 0
    rows = [ln for ln in out.splitlines() if ln.startswith("| ")][1:]
    assert len(rows) == 2  # the two FedAvg seeds are one setting
    avg = [last_finite(a7["metrics"]["global_acc"]), last_finite(a8["metrics"]["global_acc"])]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1:4] == ["fedavg", "7 8", "3"]
    assert cells[4] == f"{100 * np.mean(avg):.2f} ± {100 * np.std(avg, ddof=1):.2f}"
    nas_cells = [c.strip() for c in rows[1].strip("|").split("|")]
    assert nas_cells[1:4] == ["fedmetanas", "7", "3"]
    assert nas_cells[4] == f"{100 * last_finite(nas['metrics']['global_acc']):.2f}"
    assert "best final accuracy:" in out
    assert nas["spec"]["genotype"]["text"].splitlines()[0] in out
    code, out, _ = run_cli(capsys, "compare", *args, "--csv", "--target", "0.2")
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["method"] for r in table] == ["fedavg", "fedmetanas"]
    assert float(table[0]["final_acc_mean"]) == pytest.approx(np.mean(avg), abs=1e-12)
    assert float(table[0]["final_acc_std"]) == pytest.approx(np.std(avg, ddof=1), abs=1e-12)
    times = [np.nansum(a7["metrics"]["round_time"]), np.nansum(a8["metrics"]["round_time"])]
    assert float(table[0]["time_mean"]) == pytest.approx(np.mean(times))
    assert "time_to_target_mean" in table[0] and table[1]["time_stage_search_mean"]


def test_settings_are_labelled_by_what_tells_them_apart(runs):
    a7, a8, nas = (load_run(runs[k]) for k in ("avg7", "avg8", "nas"))
    settings, legend = group_settings([a7, nas, a8])
    assert [len(s.runs) for s in settings] == [2, 1] and legend == []
    assert [s.label for s in settings] == ["", ""]  # differ only by method
    a8.config = {**a8.config, "algorithm": {**a8.config["algorithm"], "lr": 0.01}}
    settings, _ = group_settings([a7, a8, nas])
    # fedmetanas reads no algorithm.lr (and its stored config holds none)
    assert [s.label for s in settings] == ["algorithm.lr=0.05", "algorithm.lr=0.01", ""]


# ------------------------------------------------------------------ plot


def test_plot_writes_nonblank_pngs_of_the_expected_sizes(runs, tmp_path, capsys):
    import matplotlib.image as mpimg

    out = tmp_path / "figs"
    code, text, _ = run_cli(
        capsys, "plot", str(runs["avg7"]), str(runs["avg8"]), str(runs["nas"]), "--out", str(out)
    )
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    kinds = {
        "accuracy.png": "accuracy",
        "architecture.png": "architecture",
        "time.png": "time",
        "genotype_nas.png": "genotype",
    }
    assert set(kinds) <= set(names)
    partitions = [n for n in names if n.startswith("partition")]
    assert len(partitions) == 2  # seeds 7 and 8 draw different Dirichlet partitions
    for name in names:
        kind = kinds.get(name, "partition")
        img = mpimg.imread(out / name)
        w, h = SIZES[kind]
        assert img.shape[:2] == (h, w), name
        rgb = img[..., :3].reshape(-1, 3)
        assert rgb.std() > 0.02, f"{name} looks blank"
        assert len(np.unique(rgb, axis=0)) > 50, f"{name} has too few colours"
        assert str(out / name) in text


def test_plot_of_one_run_defaults_to_its_plots_directory(runs, tmp_path, capsys):
    run = tmp_path / "one"
    shutil.copytree(runs["avg7"], run)
    code, text, _ = run_cli(capsys, "plot", str(run))
    assert code == 0
    assert (run / "plots" / "accuracy.png").is_file()
    assert "architecture.png not written" in text and not (run / "plots/architecture.png").exists()


def test_plot_metric_and_method_time_axis(runs, tmp_path, capsys):
    """--metric picks the accuracy drawn (personal_acc: Table 5); the time axis is the
    cumulative method time (evaluation apart), read from the checkpoints; a metric no run
    recorded is one clear error."""
    import matplotlib.image as mpimg

    from fednas_mpi.report.plots import _elapsed

    pair = [load_run(runs["avg7"]), load_run(runs["avg8"])]
    elapsed, label = _elapsed(pair)
    by_hand = np.mean(
        [np.cumsum(h5(runs[n])["metrics"]["method_time"]) for n in ("avg7", "avg8")], 0
    )
    np.testing.assert_allclose(elapsed, by_hand)
    assert label.startswith("method time")
    assert not np.allclose(elapsed, np.mean([np.cumsum(r.metric("round_time")) for r in pair], 0))
    outs = {}
    for metric in ("global_acc", "personal_acc"):
        out = tmp_path / metric
        code, _, _ = run_cli(
            capsys,
            "plot",
            str(runs["avg7"]),
            str(runs["avg8"]),
            "--metric",
            metric,
            "--out",
            str(out),
        )
        assert code == 0
        outs[metric] = mpimg.imread(out / "accuracy.png")
    assert not np.array_equal(outs["global_acc"], outs["personal_acc"])
    code, _, err = run_cli(
        capsys, "plot", str(runs["avg7"]), "--metric", "nope", "--out", str(tmp_path / "x")
    )
    assert code == 2 and "no run recorded the metric 'nope'" in err


# ------------------------------------------------------------------ live, interrupted, broken


def _copy_rounds(src: Path, dst: Path, rounds: list[int]) -> Path:
    dst.mkdir()
    shutil.copy(src / "config.yaml", dst)
    for r in rounds:
        shutil.copy(src / f"round_{r:05d}.h5", dst)
    return dst


def test_a_run_being_written_reads_its_complete_checkpoints(runs, tmp_path, capsys):
    run = _copy_rounds(runs["nas"], tmp_path / "live", [1, 2])
    (run / ".round_00003.h5.tmp-4242").write_bytes(b"\x89HDF\r\n half a file")
    code, out, err = run_cli(capsys, "inspect", str(run))
    assert code == 0, err
    assert "incomplete (still running or interrupted): 2 of 3 rounds" in out
    assert "round being written (.round_00003.h5.tmp-4242)" in out
    assert "genotype    not derived yet" in out
    code, out, _ = run_cli(capsys, "inspect", str(run), "--json")
    assert len(json.loads(out)["rounds"]) == 2
    code, out, _ = run_cli(capsys, "compare", str(run), str(runs["avg7"]))
    assert code == 0 and "2/3" in out and "incomplete runs" in out
    code, _, _ = run_cli(capsys, "plot", str(run), "--out", str(tmp_path / "p"))
    assert code == 0 and (tmp_path / "p" / "accuracy.png").is_file()


def test_a_checkpoint_from_before_per_client_metrics_still_reads(runs, tmp_path, capsys):
    run = _copy_rounds(runs["avg7"], tmp_path / "old", [3])
    with h5py.File(run / "round_00003.h5", "a") as f:
        del f["client_metrics"]
    code, out, err = run_cli(capsys, "inspect", str(run), "--clients")
    assert code == 0, err
    assert "per-client metrics not stored" in out


def test_a_checkpoint_from_before_method_time_has_it_unknown(runs, tmp_path, capsys):
    """Files written before the method was timed apart from evaluation (806cbd2) read with
    the method time unknown (migrations.checkpoint_records): no total in the summary, and
    the plot's time axis is the round time, never a partial sum."""
    from fednas_mpi.report.plots import _elapsed
    from fednas_mpi.report.summary import summary

    run = _copy_rounds(runs["avg7"], tmp_path / "old", [3])
    with h5py.File(run / "round_00003.h5", "a") as f:
        del f["metrics/method_time"]
        # as such files were written: the config records no schema version
        text = str(f.attrs["config"])
        assert text.startswith("schema_version: ")
        f.attrs["config"] = text.split("\n", 1)[1]
    old = load_run(run)
    assert len(old.metrics["method_time"]) == 3 and np.isnan(old.metrics["method_time"]).all()
    assert summary(old)["method_time"] is None
    assert summary(load_run(runs["avg7"]))["method_time"] == pytest.approx(
        float(np.sum(h5(runs["avg7"])["metrics"]["method_time"]))
    )
    elapsed, label = _elapsed([old, load_run(runs["avg8"])])
    assert label.startswith("time in rounds")
    by_hand = np.mean(
        [np.cumsum(h5(runs[n])["metrics"]["round_time"]) for n in ("avg7", "avg8")], 0
    )
    np.testing.assert_allclose(elapsed, by_hand)
    code, out, err = run_cli(capsys, "inspect", str(run))
    assert code == 0, err


def _foreign(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 2)))


def test_a_bad_newest_checkpoint_is_skipped_with_a_warning(runs, tmp_path, capsys):
    """The store's one policy (newest_readable): the report reads the newest file that
    reads back and says which newer one it passed over, and why."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(runs["avg7"] / "round_00001.h5", run)
    _foreign(run / "round_00002.h5")
    code, out, err = run_cli(capsys, "inspect", str(run))
    assert code == 0, err
    assert "round_00001.h5" in out
    assert err.startswith("fednas-mpi: warning: ") and f"{run}/round_00002.h5" in err
    assert "not a fednas-mpi checkpoint" in err


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "temp_only",
        "truncated",
        "foreign",
        "foreign_file",
        "not_a_run",
        "just_started",
    ],
)
def test_unusable_input_is_one_clear_error(runs, tmp_path, capsys, case):
    run = tmp_path / "run"
    if case != "missing":
        run.mkdir()
    target, named = run, str(run)
    if case == "temp_only":
        (run / ".round_00001.h5.tmp-77").write_bytes(b"partial")
        named = ".round_00001.h5.tmp-77"
    elif case == "truncated":
        data = (sorted(runs["avg7"].glob("round_*.h5"))[-1]).read_bytes()
        (run / "round_00003.h5").write_bytes(data[: len(data) // 2])
        named = str(run / "round_00003.h5")
    elif case == "foreign":  # nothing readable: the directory and each file's reason
        _foreign(run / "round_00002.h5")
        named = f"{run}: no readable checkpoint (round_NNNNN.h5); skipped {run}/round_00002.h5"
    elif case == "foreign_file":
        target = run / "data.h5"
        _foreign(target)
        named = str(target)
    elif case == "not_a_run":
        (run / "notes.txt").write_text("x")
        named = "notes.txt"
    elif case == "just_started":
        (run / "config.yaml").write_text("run: {rounds: 3}\n")
        named = "no checkpoint yet"
    for command in ("inspect", "compare", "plot"):
        argv = [command, str(target)] + (
            ["--out", str(tmp_path / "p")] if command == "plot" else []
        )
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, (command, out, err)
        assert err.startswith("fednas-mpi: error: ") and err.count("\n") == 1, err
        assert named in err and "Traceback" not in err


def test_tools_scripts_are_thin_entries(runs, tmp_path):
    """The three scripts in one Python process (runpy), as `python tools/X.py ...` runs them."""
    empty = tmp_path / "empty"
    empty.mkdir()
    calls = [
        ("inspect_run.py", [str(empty)]),
        ("compare_runs.py", [str(runs["avg7"]), str(runs["avg8"]), "--csv"]),
        ("plot_runs.py", [str(runs["avg7"]), "--out", str(tmp_path / "p")]),
    ]
    code = "\n".join(
        [
            "import runpy, sys",
            f"for script, args in {[(str(ROOT / 'tools' / s), a) for s, a in calls]!r}:",
            "    sys.argv = [script, *args]",
            "    try:",
            "        runpy.run_path(script, run_name='__main__')",
            "    except SystemExit as e:",
            "        print(f'exit {e.code}', flush=True)",
            "        print(f'exit {e.code}', file=sys.stderr, flush=True)",
        ]
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    err = res.stderr.splitlines()
    assert err[0] == (
        f"fednas-mpi: error: {empty}: empty directory, not a fednas-mpi run (no "
        f"round_NNNNN.h5); give the --out directory of a run"
    )
    assert err[1:] == ["exit 2", "exit 0", "exit 0"]
    out = res.stdout.split("exit ")
    assert (
        out[1]
        .split("\n", 1)[1]
        .startswith("setting,method,dataset,runs,seeds,rounds,final_acc_mean")
    )
    assert (tmp_path / "p" / "accuracy.png").is_file()
