"""Round counts of a schedule (FedMetaNAS's warm-up, pruning and derivation rounds, FedNAS's
search rounds) given as a share of run.rounds: resolved once at load to whole rounds, so a
paper schedule scales to a short run; integers mean what they always meant."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fednas_mpi.config import (
    ConfigError,
    from_dict,
    load,
    reference,
    rounds_of,
    to_dict,
    to_yaml,
)
from fednas_mpi.migrations import from_stored

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "configs" / "paper"


def meta(rounds: int, **keys) -> dict:
    return {
        "run": {"rounds": rounds},
        "model": {"name": "darts"},
        "algorithm": {"name": "fedmetanas", "fedmetanas": keys},
    }


def problems(raw, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as e:
        from_dict(raw, list(overrides))
    return e.value.problems


@pytest.mark.parametrize(
    "fraction, rounds, count",
    [
        (0.3, 1000, 300),
        (0.3, 6, 2),  # 1.8: nearest
        (0.25, 6, 2),  # 1.5: halves up
        (0.29, 50, 15),  # exactly 14.5 as written; the binary float product is 14.4999...
        (0.05, 6, 1),  # 0.3 rounds to 0, but a positive share is at least one round
        (0.01, 1000, 10),
        (0.999, 6, 6),
    ],
)
def test_a_share_resolves_to_the_nearest_round_halves_up_at_least_one(fraction, rounds, count):
    assert rounds_of(fraction, rounds) == count


def test_fractions_are_resolved_against_run_rounds_after_the_overrides():
    raw = meta(1000, arch_warmup_rounds=0.05, prune_start=0.1, prune_every=0.01, final_round=0.5)
    cfg = from_dict(raw, ["run.rounds=6"])
    f = cfg.algorithm.fedmetanas
    assert (f.arch_warmup_rounds, f.prune_start, f.prune_every, f.final_round) == (1, 1, 1, 3)
    assert all(type(v) is int for v in (f.arch_warmup_rounds, f.final_round))
    # the resolved (stored) config holds the counts, so it reads back to the same run
    stored = yaml.safe_load(to_yaml(cfg))
    assert stored["algorithm"]["fedmetanas"]["final_round"] == 3
    assert to_dict(from_stored(stored)) == to_dict(cfg)


def test_integers_keep_their_meaning_whatever_run_rounds():
    for rounds in (60, 1000):
        f = from_dict(meta(rounds, arch_warmup_rounds=5, final_round=50)).algorithm.fedmetanas
        assert (f.arch_warmup_rounds, f.final_round) == (5, 50)


def test_a_resumed_run_keeps_its_resolved_schedule_when_run_rounds_grows():
    cfg = from_dict(meta(10, final_round=0.3))
    assert cfg.algorithm.fedmetanas.final_round == 3
    resumed = from_stored(yaml.safe_load(to_yaml(cfg)), ["run.rounds=100"])
    assert resumed.algorithm.fedmetanas.final_round == 3


@pytest.mark.parametrize("value", [1.0, 50.0, 0.0])
def test_a_whole_float_is_refused_as_ambiguous(value):
    (line,) = problems(meta(10, final_round=value))
    assert line.startswith(f"algorithm.fedmetanas.final_round = {value!r}: ambiguous")
    assert f"write {int(value)} for {int(value)} round(s)" in line


@pytest.mark.parametrize("value", [1.5, -0.5, float("inf")])
def test_other_floats_are_refused(value):
    (line,) = problems(meta(10, prune_every=value))
    assert "expected an integer (rounds) or a fraction of run.rounds strictly between 0 and 1" in (
        line
    )


def test_yaml_exponent_notation_reads_as_a_fraction():
    # YAML 1.1 reads 5e-1 (no dot) as a string, as for float keys
    cfg = from_dict(
        yaml.safe_load(
            "run: {rounds: 10}\nmodel: {name: darts}\n"
            "algorithm: {name: fednas, fednas: {search_rounds: 5e-1}}"
        )
    )
    assert cfg.algorithm.fednas.search_rounds == 5


def test_keys_that_are_not_round_counts_take_no_fraction():
    (line,) = problems({"run": {"eval_every": 0.5}})
    assert line == "run.eval_every = 0.5: expected an integer"


def test_a_check_that_refuses_a_resolved_count_names_the_fraction():
    raw = {
        "run": {"rounds": 2},
        "model": {"name": "darts"},
        "algorithm": {"name": "fednas", "fednas": {"search_rounds": 0.9}},
    }
    (line,) = problems(raw)
    assert line.startswith("algorithm.fednas.search_rounds = 2: leaves no round to retrain")
    assert line.endswith("(algorithm.fednas.search_rounds was 0.9 of run.rounds)")


def test_the_reference_says_which_keys_take_a_fraction():
    types = {key: tp for key, tp, _, _ in reference()}
    for key in (
        "algorithm.fedmetanas.arch_warmup_rounds",
        "algorithm.fedmetanas.prune_start",
        "algorithm.fedmetanas.prune_every",
        "algorithm.fedmetanas.settle_rounds",
        "algorithm.fedmetanas.final_round",
        "algorithm.fednas.search_rounds",
    ):
        assert types[key] == "an integer or a fraction of run.rounds", key
    assert types["run.eval_every"] == "an integer"


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_paper_schedules_are_unchanged_at_the_papers_1000_rounds(dataset):
    """The paper configs now write their schedules as shares; at 1000 rounds they are the
    integers they were written as before."""
    for name in ("fedmetanas", "meta_fedpnas", "meta_perfedrlnas"):
        f = load(PAPER / dataset / f"{name}.yaml").algorithm.fedmetanas
        assert (f.arch_warmup_rounds, f.prune_start, f.prune_every, f.final_round) == (
            50,
            100,
            10,
            300,
        ), name
    assert load(PAPER / dataset / "fednas.yaml").algorithm.fednas.search_rounds == 500


def test_paper_setup_evaluates_on_the_gpu_and_a_fixed_subset():
    cfg = load(PAPER / "cifar10" / "fedmetanas.yaml")
    assert cfg.runtime.server_device == "auto"
    assert cfg.run.eval_every == 10 and cfg.run.eval_subset == 2000 and cfg.run.test_subset == 0
