"""End-to-end runs of ``mpirun -n K fednas-mpi`` as subprocesses.

Rank-count invariance, resume equality, abort on a failing rank, and bad input
reported once before any training.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import launch, write_config

from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def invariance_runs(tmp_path_factory):
    """The same config run with 1, 2, 3 and 5 ranks (5: one worker idle, K=3)."""
    root = tmp_path_factory.mktemp("ranks")
    cfg = write_config(root / "cfg.yaml")
    runs = {}
    for n in (1, 2, 3, 5):
        out = root / f"n{n}"
        res = launch(n, [str(cfg), "--out", str(out)])
        assert res.returncode == 0, res.stderr
        runs[n] = (out, res)
    return runs


def test_one_checkpoint_per_round_and_layout(invariance_runs):
    out, res = invariance_runs[3]
    files = list_checkpoints(out)
    assert [r for r, _ in files] == [1, 2, 3, 4]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    ck = read_checkpoint(files[-1][1])
    assert ck.round == 4 and ck.attrs["world_size"] == 3 and ck.attrs["rounds_planned"] == 4
    for name in ("global_acc", "global_loss", "round_time", "train_loss", "local_acc"):
        assert ck.metrics[name].shape == (4,), name
    assert ck.stages == ["train"] * 4
    assert "fedavg" in ck.config_yaml and "torch" in ck.attrs["versions"]
    # metrics history of round 2's file is a prefix of round 4's
    ck2 = read_checkpoint(files[1][1])
    np.testing.assert_array_equal(ck2.metrics["global_acc"], ck.metrics["global_acc"][:2])
    # progress: one plain line per round when stdout is not a terminal
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("round ")]
    assert [ln.split()[1] for ln in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert "ETA" in lines[0] and "acc" in lines[0]


def test_rank_count_does_not_change_results(invariance_runs):
    ref = read_checkpoint(list_checkpoints(invariance_runs[1][0])[-1][1])
    assert np.isfinite(ref.metrics["global_acc"]).all()
    for n in (2, 3, 5):
        ck = read_checkpoint(list_checkpoints(invariance_runs[n][0])[-1][1])
        np.testing.assert_allclose(
            ck.metrics["global_acc"], ref.metrics["global_acc"], atol=1e-5, err_msg=f"-n {n}"
        )
        np.testing.assert_allclose(
            ck.metrics["global_loss"], ref.metrics["global_loss"], atol=1e-5, err_msg=f"-n {n}"
        )
        assert list(ck.state) == list(ref.state)
        for k in ref.state:
            torch.testing.assert_close(ck.state[k], ref.state[k], rtol=0, atol=1e-5)


def test_resume_is_bit_identical(invariance_runs, tmp_path):
    full, _ = invariance_runs[3]
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for r in (3, 4):
        (part / f"round_{r:05d}.h5").unlink()
    # a newer but broken file (e.g. copied while truncated) is skipped with a warning
    broken = (part / "round_00002.h5").read_bytes()
    (part / "round_00003.h5").write_bytes(broken[: len(broken) // 3])
    res = launch(3, ["--resume", str(part)])
    assert res.returncode == 0, res.stderr
    assert "round_00003.h5" in res.stderr and "resuming at round 3" in res.stdout
    a = read_checkpoint(full / "round_00004.h5")
    b = read_checkpoint(part / "round_00004.h5")
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    for k in ("global_acc", "global_loss", "train_loss", "local_acc"):
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k])
    # resuming a finished run has nothing to do and says so
    again = launch(1, ["--resume", str(part)])
    assert again.returncode == 0 and "nothing to resume" in again.stdout


def test_a_checkpoint_of_the_first_config_shape_resumes_bit_identically(invariance_runs, tmp_path):
    """The run's round-2 checkpoint and config.yaml rewritten in the shape the first
    fednas-mpi stored (fixtures/stored/9605f0b_fedavg.yaml: no schema_version, none of
    the keys added since): the migrations fill what the run ran with, and it resumes to
    the same numbers."""
    import h5py
    import yaml

    from fednas_mpi.config import flatten

    full, _ = invariance_runs[3]
    part = tmp_path / "old"
    shutil.copytree(full, part)
    for r in (3, 4):
        (part / f"round_{r:05d}.h5").unlink()
    first = Path(__file__).parents[1] / "config" / "fixtures" / "stored" / "9605f0b_fedavg.yaml"
    first_keys = set(flatten(yaml.safe_load(first.read_text())))
    now = flatten(yaml.safe_load((part / "config.yaml").read_text()))
    old: dict = {}
    for dotted, value in now.items():
        if dotted in first_keys:
            section, key = dotted.split(".", 1)
            old.setdefault(section, {})[key] = value
    assert "schema_version" in now and "kernels" not in old and "runtime" in old
    text = yaml.safe_dump(old, sort_keys=False)
    (part / "config.yaml").write_text(text)
    with h5py.File(part / "round_00002.h5", "r+") as f:
        f.attrs["config"] = text
    res = launch(3, ["--resume", str(part)])
    assert res.returncode == 0, res.stderr
    assert "resuming at round 3" in res.stdout
    a = read_checkpoint(full / "round_00004.h5")
    b = read_checkpoint(part / "round_00004.h5")
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    for k in ("global_acc", "global_loss", "train_loss", "local_acc"):
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k])


def test_resume_extends_with_more_rounds_and_rejects_changed_results(invariance_runs, tmp_path):
    full, _ = invariance_runs[2]
    run = tmp_path / "ext"
    shutil.copytree(full, run)
    res = launch(2, ["--resume", str(run), "--set", "run.rounds=5"])
    assert res.returncode == 0, res.stderr
    assert [r for r, _ in list_checkpoints(run)][-1] == 5
    bad = write_config(tmp_path / "seed.yaml", run={"seed": 8, "rounds": 6})
    res = launch(2, [str(bad), "--resume", str(run)])
    assert res.returncode == 2
    assert res.stderr.count("run.seed") == 1 and "Traceback" not in res.stderr
    assert [r for r, _ in list_checkpoints(run)][-1] == 5  # nothing lost


CRASH = textwrap.dedent("""
    import sys, threading
    from mpi4py import MPI
    import fednas_mpi.algorithms.fedavg as fedavg
    from fednas_mpi.cli import main

    MODE = sys.argv.pop(1)
    original = fedavg.FedAvg.client_update

    def client_update(self, model, data, ctx, state):
        if MPI.COMM_WORLD.Get_rank() == 2 and ctx.round == 1:
            if MODE == "thread":
                t = threading.Thread(target=lambda: 1 / 0)
                t.start()
                t.join()
                threading.Event().wait(60)  # the abort must end this rank
            raise RuntimeError("injected failure")
        return original(self, model, data, ctx, state)

    fedavg.FedAvg.client_update = client_update
    sys.exit(main())
""")


@pytest.mark.parametrize("mode", ["main", "thread"])
def test_exception_on_one_rank_aborts_the_job(tmp_path, mode):
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    cfg = write_config(
        tmp_path / "cfg.yaml", federation={"clients_per_round": 8}, run={"rounds": 3}
    )
    res = launch(
        4,
        [mode, str(cfg), "--out", str(tmp_path / "run")],
        timeout=60,
        script=[sys.executable, str(script)],
    )
    assert res.returncode != 0
    needle = "ZeroDivisionError" if mode == "thread" else "RuntimeError: injected failure"
    assert res.stderr.count(needle) == 1, res.stderr
    assert "[rank 2] Traceback" in res.stderr
    # round 1 finished before the failure and its checkpoint is intact
    assert read_checkpoint(tmp_path / "run" / "round_00001.h5").round == 1


def test_bad_config_reported_once_before_training(tmp_path):
    cfg = write_config(
        tmp_path / "bad.yaml", run={"rounds": 0}, partition={"alfa": 0.3, "alpha": 0.5}
    )
    out = tmp_path / "run"
    res = launch(3, [str(cfg), "--out", str(out)], timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("run.rounds = 0") == 1
    assert res.stderr.count("partition.alfa: unknown key") == 1
    assert "Traceback" not in res.stderr and not out.exists()


def test_bad_override_and_missing_file(tmp_path):
    res = launch(2, [str(tmp_path / "nope.yaml")], timeout=60)
    assert res.returncode == 2 and res.stderr.count("nope.yaml") == 1
    cfg = write_config(tmp_path / "cfg.yaml")
    res = launch(
        2, [str(cfg), "--set", "algorithm.lr=fast", "--out", str(tmp_path / "r")], timeout=60
    )
    assert res.returncode == 2 and res.stderr.count("algorithm.lr = 'fast'") == 1


def test_infeasible_partition_is_one_error(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", partition={"num_clients": 400, "min_train": 8})
    res = launch(3, [str(cfg), "--out", str(tmp_path / "run")], timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("fednas-mpi: error") == 1 and "partition.min_train" in res.stderr
    assert "Traceback" not in res.stderr
    # config.yaml, the run's first file, alone: usable as --out (or --resume) again
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.yaml"]


def test_output_directory_checks(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", run={"rounds": 1})
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    res = launch(2, [str(cfg), "--out", str(out)], timeout=60)
    assert res.returncode == 2 and res.stderr.count("--overwrite") == 1
    assert (out / "notes.txt").read_text() == "keep me" and not list(out.glob("round_*"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = launch(2, [str(cfg), "--out", str(blocker / "sub")], timeout=60)
    assert res.returncode == 2 and res.stderr.count("cannot write there") == 1
    res = launch(1, [str(cfg), "--out", str(out), "--overwrite"], timeout=60)
    assert res.returncode == 0, res.stderr
    assert [r for r, _ in list_checkpoints(out)] == [1]
