"""configs/ is SCALE/DATASET/METHOD.yaml over fragments, indexed once (shipped_configs.py)."""

from pathlib import Path

import pytest
import yaml

from fednas_mpi import cli
from fednas_mpi.algorithms import registry
from fednas_mpi.cli import UsageError
from fednas_mpi.config import load, load_raw, load_run
from fednas_mpi.shipped_configs import (
    MOVED_FILE,
    main,
    markdown,
    moved,
    moved_to,
    names_method,
    runs,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
RUNS = runs(CONFIGS)
# configs/quickstart.yaml is cpu/digits/fedmetanas.yaml under another run name: the README's
# first command keeps its path and cannot drift from the file in the tree
ALIASES = {"quickstart.yaml": "cpu/digits/fedmetanas.yaml"}


def _own(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _bases(path: Path) -> list[Path]:
    """Every file in the base: chain of ``path`` (depth first)."""
    out = []
    base = _own(path).get("base") or []
    for name in [base] if isinstance(base, str) else base:
        out += [path.parent / name, *_bases(path.parent / name)]
    return out


def test_every_yaml_file_is_a_run_listed_once_or_a_fragment():
    listed = [r.path for r in RUNS]
    assert len(listed) == len(set(listed)) and len(listed) > 70
    for path in sorted(CONFIGS.rglob("*.yaml")):
        rel = path.relative_to(CONFIGS).as_posix()
        if rel == MOVED_FILE:
            continue
        assert (rel in listed) == names_method(path), rel
        if rel not in listed:  # a fragment: its bases resolve, its keys are config keys
            raw = load_raw(path)
            # a scale's setup.yaml may also say where that scale runs (paper: rank 0's
            # evaluation on a GPU); runtime keys change no result
            scale = {"runtime"} if path.name == "setup.yaml" else set()
            assert isinstance(raw, dict) and set(raw) <= {
                "run",
                "data",
                "partition",
                "model",
                "federation",
                *scale,
            }, rel


def test_runs_sit_at_scale_dataset_method_and_name_their_method():
    for r in RUNS:
        cfg = load_run(CONFIGS / r.path)
        assert (cfg.algorithm.name, cfg.data.name) == (r.method, r.dataset), r.path
        assert r.description and len(r.description) <= 110, r.path
        parts = Path(r.path).parts
        if len(parts) == 1:
            assert r.path in ("quickstart.yaml", "defaults.yaml")
            continue
        scale, dataset, name = parts
        assert scale in ("cpu", "paper") and dataset == cfg.data.name, r.path
        assert name.removesuffix(".yaml").split("-")[0] == cfg.algorithm.name, r.path


def test_no_run_bases_on_a_file_that_names_a_method():
    for r in RUNS:
        path = CONFIGS / r.path
        if r.path in ALIASES:
            assert _bases(path)[0] == CONFIGS / ALIASES[r.path]
            assert set(_own(path)) == {"base", "run"} and set(_own(path)["run"]) == {"name"}
            continue
        for base in _bases(path):
            assert not names_method(base), f"{r.path} bases on {base}"
            assert "algorithm" not in _own(base), f"{base}: a fragment holds no method keys"


def test_runs_carry_only_the_algorithm_keys_their_method_reads():
    for r in RUNS:
        algorithm = load_raw(CONFIGS / r.path).get("algorithm", {})
        allowed = set(registry.method(r.method).keys)  # the registry says what it reads
        assert set(algorithm) <= allowed, (r.path, set(algorithm) - allowed)


def test_quickstart_is_the_cpu_digits_fedmetanas_run():
    q, f = load(CONFIGS / "quickstart.yaml"), load(CONFIGS / ALIASES["quickstart.yaml"])
    assert q.run.name == "quickstart" and f.run.name != "quickstart"
    f.run.name = "quickstart"
    assert q == f


def test_every_moved_name_is_gone_and_its_new_file_loads():
    mapping = moved(CONFIGS)
    assert len(mapping) >= 70
    for old, new in mapping.items():
        assert not (CONFIGS / old).exists(), old
        assert (CONFIGS / new).is_file(), new
        load_run(CONFIGS / new)
        assert moved_to(CONFIGS / old) == CONFIGS / new
    assert moved_to(CONFIGS / "no_such_file.yaml") is None


def test_moved_path_is_one_error_naming_the_new_file(tmp_path):
    with pytest.raises(UsageError, match="configs/cpu/digits/fednas.yaml instead"):
        cli.decide(
            cli.build_parser().parse_args(
                [str(CONFIGS / "fednas_digits.yaml"), "--out", str(tmp_path / "run")]
            )
        )
    assert not (tmp_path / "run").exists()
    with pytest.raises(UsageError, match="paper/cifar10/fedmetanas.yaml instead.*--resume"):
        cli.decide(
            cli.build_parser().parse_args(
                [str(CONFIGS / "fedmetanas_cifar10.yaml"), "--out", str(tmp_path / "r"), "--resume"]
            )
        )


def test_configs_command_lists_every_run(capsys):
    assert cli.main(["configs", str(CONFIGS)]) == 0  # without MPI, like data and inspect
    out = capsys.readouterr().out
    for r in RUNS:
        assert str(CONFIGS / r.path) in out and r.description in out
    assert main([str(CONFIGS), "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == markdown(CONFIGS)


def test_docs_config_table_is_current():
    page = (ROOT / "docs" / "data.md").read_text()
    assert markdown(CONFIGS) in page, "regenerate with: fednas-mpi configs --markdown"
