"""``--resume`` starts or resumes; config files that say nothing are refused (no mpirun:
rank 0's decision, ``cli.decide``, is called directly; the runs are in tests/faults)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import TINY, write_config

from fednas_mpi import cli
from fednas_mpi.config import (
    SCHEMA_VERSION,
    VERSION_KEY,
    ConfigError,
    from_dict,
    load_run,
    to_dict,
)
from fednas_mpi.shipped_configs import runs
from fednas_mpi.store import write_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def decide(*argv: str):
    return cli.decide(cli.build_parser().parse_args(list(argv)))


def test_starts_when_nothing_is_there_and_config_yaml_is_the_first_file(tmp_path):
    cfg_file = write_config(tmp_path / "cfg.yaml")
    run = tmp_path / "new" / "run"
    cfg, run_dir, ckpt = decide(str(cfg_file), "--out", str(run), "--resume")
    assert ckpt is None and run_dir == run and cfg.algorithm.name == "fedavg"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored == {VERSION_KEY: SCHEMA_VERSION, **to_dict(cfg)}
    # the plain start writes it first as well
    other = tmp_path / "plain"
    decide(str(cfg_file), "--out", str(other))
    assert sorted(p.name for p in other.iterdir()) == ["config.yaml"]


def test_killed_before_the_first_checkpoint_restarts_from_config_yaml(tmp_path, capsys):
    cfg_file = write_config(tmp_path / "cfg.yaml")
    run = tmp_path / "run"
    first, _, _ = decide(str(cfg_file), "--out", str(run), "--resume")
    (run / ".round_00001.h5.tmp-4242").write_bytes(b"half a file")  # a killed writer's
    (run / "STOP").touch()
    cfg, _, ckpt = decide("--resume", str(run))  # no CFG: the run's own config.yaml
    assert ckpt is None and cfg == first
    assert not (run / ".round_00001.h5.tmp-4242").exists()
    err = capsys.readouterr().err
    assert "removed" in err and ".round_00001.h5.tmp-4242" in err
    assert "holds no checkpoint yet: starting" in err


def test_resumes_from_a_checkpoint_and_refuses_a_disagreeing_config(tmp_path):
    cfg_file = write_config(tmp_path / "cfg.yaml")
    run = tmp_path / "run"
    cfg, _, _ = decide(str(cfg_file), "--out", str(run), "--resume")
    write_checkpoint(
        run,
        1,
        config_yaml=(run / "config.yaml").read_text(),
        spec={},
        state={},
        server_state={},
        client_states={},
        metrics={},
        stages=["x"],
        partition={},
        attrs={},
    )
    again, _, ckpt = decide(
        str(cfg_file), "--out", str(run), "--resume", "--set", "run.rounds=9"
    )  # run.rounds may change
    assert ckpt.round == 1 and again.run.rounds == 9
    seed = write_config(tmp_path / "seed.yaml", run={**TINY["run"], "seed": 99})
    with pytest.raises(ConfigError, match="run.seed: run has 7, .*seed.yaml has 99"):
        decide(str(seed), "--out", str(run), "--resume")


def test_refuses_a_config_that_disagrees_with_an_earlier_start(tmp_path):
    run = tmp_path / "run"
    decide(str(write_config(tmp_path / "cfg.yaml")), "--out", str(run), "--resume")
    lr = write_config(tmp_path / "lr.yaml", algorithm={**TINY["algorithm"], "lr": 1e8})
    with pytest.raises(ConfigError, match="algorithm.lr"):
        decide(str(lr), "--out", str(run), "--resume")


def test_broken_checkpoints_without_a_valid_one_are_set_aside(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "round_00002.h5").write_bytes(b"truncated")
    cfg, _, ckpt = decide(str(write_config(tmp_path / "cfg.yaml")), "--out", str(run), "--resume")
    assert ckpt is None
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "round_00002.h5.broken"]
    assert "round_00002.h5" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--resume"], "--resume needs the run directory"),
        (["--resume", "{run}"], "nothing to resume"),
        (["{cfg}", "--out", "{busy}", "--resume"], "not a fednas-mpi run's (notes.txt)"),
        (["{cfg}", "--out", "{run}", "--resume", "{busy}"], "different directories"),
    ],
)
def test_start_or_resume_usage_errors(tmp_path, argv, words):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    names = {"cfg": write_config(tmp_path / "cfg.yaml"), "run": tmp_path / "run", "busy": busy}
    with pytest.raises(cli.UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        decide(*(a.format(**names) for a in argv))
    assert (busy / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_out_accepts_a_directory_holding_only_config_yaml(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("left by a start that failed before round 1\n")
    decide(str(write_config(tmp_path / "cfg.yaml")), "--out", str(run))
    assert "algorithm" in yaml.safe_load((run / "config.yaml").read_text())


# ---------------------------------------------------------------- configs that say nothing


@pytest.mark.parametrize("text", ["", "\n# nothing but a comment\n", "{}\n"])
def test_an_empty_config_is_one_error(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="empty.yaml is empty.*configs/defaults.yaml") as e:
        load_run(path)
    assert len(e.value.problems) == 1
    with pytest.raises(ConfigError):
        decide(str(path), "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_config_naming_no_method_is_one_error(tmp_path):
    truncated = tmp_path / "trunc.yaml"
    truncated.write_text("run:\n  rounds: 30\ndata:\n  name: digits\n")
    with pytest.raises(ConfigError, match="trunc.yaml names no method"):
        load_run(truncated)
    section_only = tmp_path / "section.yaml"
    section_only.write_text("algorithm:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="names no method"):
        load_run(section_only)
    # a base: file may name it
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nrun:\n  rounds: 3\n")
    (tmp_path / "base.yaml").write_text("algorithm:\n  name: fednas\nmodel:\n  name: darts\n")
    assert load_run(child).algorithm.name == "fednas"


def test_defaults_are_one_explicit_file_away():
    assert load_run(ROOT / "configs" / "defaults.yaml") == from_dict({})


def test_every_runnable_shipped_config_names_its_method():
    files = [ROOT / "configs" / r.path for r in runs(ROOT / "configs")]
    assert len(files) > 40
    for f in files:
        load_run(f)
