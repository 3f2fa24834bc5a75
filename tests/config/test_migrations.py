"""Stored configs of every shape the project has written upgrade, through
``fednas_mpi.migrations``, to today's config; a config written now carries the current
schema version; a newer one is refused with one message.

The fixtures under ``fixtures/stored/`` were written by each named commit's own
``config.to_yaml`` (its tree run on the same small run: 4 rounds, 4 clients, seed 3).
Each case below says, by hand, what the upgrade must add (the values recorded for runs
before each change) and which sections it must drop (those the run never read); the
expected config is then built strictly from the fixture's own values plus those.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from fednas_mpi import config as config_mod
from fednas_mpi import migrations
from fednas_mpi.config import SCHEMA_VERSION, VERSION_KEY, ConfigError, flatten, from_dict, to_dict
from fednas_mpi.migrations import STEPS, NewerConfigError, from_stored, stored, upgrade

FIXTURES = Path(__file__).parent / "fixtures" / "stored"

BEFORE_ARCH_KEYS = {  # the switches of 2026-12-06, each at what the runs before it did
    "algorithm.fedmetanas.arch_update": "client",
    "algorithm.fedmetanas.prune_rule": "gap",
    "algorithm.fedmetanas.derived_training": "maml",
    "algorithm.fedmetanas.derive_rule": "logits",
}
OTHER_METHODS_OF_FEDNAS = [
    "algorithm.lr",
    "algorithm.momentum",
    "algorithm.weight_decay",
    "algorithm.fedmetanas",
    "algorithm.perfedavg",
    "algorithm.fedrep",
    "algorithm.fedbabu",
    "algorithm.feddsnas",
    "algorithm.fedrlnas",
    "algorithm.perfedrlnas",
    "algorithm.fedpnas",
    "model.channels",
    "model.hidden",
    "model.mobilenet",
]

CASES = {
    # the first shape: no kernels, no devices, no data options, one method
    "9605f0b_fedavg.yaml": (
        {
            "run.eval_subset": 0,
            "run.test_subset": 0,
            "run.val_every": 0,
            "run.patience": 0,
            "run.personal_eval_every": 0,
            "run.on_nonfinite": "abort",
            "data.download": False,
            "data.resize": 0,
            "data.augment": False,
            "partition.tau": 4,
            "partition.train_size": 0,
            "partition.eval_size": 0,
            "partition.overlap": False,
            "runtime.device": "cpu",
            "runtime.gpus": [],
            "runtime.server_device": "cpu",
            "runtime.tf32": False,
            "runtime.transport": "mpi",
            "kernels.backend": "reference",
            "kernels.supernet": "reference",
            "store.tensorboard": False,
        },
        [],
    ),
    # every method's section, before early stopping and the non-finite guards
    "dc73174_fednas.yaml": (
        {
            "run.eval_subset": 0,
            "run.test_subset": 0,
            "run.val_every": 0,
            "run.patience": 0,
            "run.on_nonfinite": "abort",
            "algorithm.fednas.arch_update": "client",
            "algorithm.fednas.derive_rule": "logits",
            "kernels.supernet": "reference",
            "store.tensorboard": False,
        },
        OTHER_METHODS_OF_FEDNAS,
    ),
    # every method's section (random_nas's too), just before each method owned its own
    "6d8b8db_fednas.yaml": (
        {
            "run.test_subset": 0,
            "algorithm.fednas.arch_update": "client",
            "algorithm.fednas.derive_rule": "logits",
            "kernels.supernet": "reference",
        },
        [*OTHER_METHODS_OF_FEDNAS, "algorithm.random_nas"],
    ),
    # its own section only, before kernels.supernet
    "d4ba66a_fedmetanas.yaml": (
        {"run.test_subset": 0, "kernels.supernet": "reference", **BEFORE_ARCH_KEYS},
        [],
    ),
    # kernels.supernet stored (auto stays auto), before run.test_subset
    "f7bf06e_fedmetanas.yaml": ({"run.test_subset": 0, **BEFORE_ARCH_KEYS}, []),
}
LATER_CASES = {
    "1bdd6a0_random_nas.yaml": ({"algorithm.random_nas.genotype": ""}, []),
    "420a409_fedmetanas.yaml": (BEFORE_ARCH_KEYS, []),
    "a3db1a5_fedmetanas.yaml": (
        {k: v for k, v in BEFORE_ARCH_KEYS.items() if not k.endswith("arch_update")},
        [],
    ),
    "a3db1a5_fedpnas.yaml": ({"algorithm.fedpnas.arch_update": "client"}, []),
    "6f0428c_fedmetanas.yaml": (
        {
            "algorithm.fedmetanas.derived_training": "maml",
            "algorithm.fedmetanas.derive_rule": "logits",
        },
        [],
    ),
    "4b6445b_fedmetanas.yaml": ({}, []),  # today's shape, from before versions were stored
}
CASES.update({k: v for k, v in LATER_CASES.items() if (FIXTURES / k).exists()})


def unflatten(flat: dict) -> dict:
    out: dict = {}
    for dotted, value in flat.items():
        node = out
        *path, last = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return out


def dropped(key: str, sections: list[str]) -> bool:
    return any(key == s or key.startswith(s + ".") for s in sections)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_stored_shape_upgrades_to_its_config(name):
    recorded, sections = CASES[name]
    raw = yaml.safe_load((FIXTURES / name).read_text())
    assert VERSION_KEY not in raw  # written before versions were stored: version 0
    old = flatten(raw)
    assert not set(recorded) & set(old), "a recorded value the fixture already holds"
    assert all(any(dropped(k, [s]) for k in old) for s in sections), "nothing to drop"
    kept = {k: v for k, v in old.items() if not dropped(k, sections)}
    expected = from_dict(unflatten({**kept, **recorded}))
    cfg = from_stored(raw, source=FIXTURES / name)
    assert cfg == expected
    assert to_dict(cfg) == to_dict(expected)
    # nothing the run stored (and reads) changed
    new = flatten(to_dict(cfg))
    assert {k: new[k] for k in kept} == kept


def test_the_fixtures_cover_every_step():
    # each step changes at least one fixture: every shape of the history is exercised
    raws = [yaml.safe_load(p.read_text()) for p in sorted(FIXTURES.glob("*.yaml"))]
    for i, step in enumerate(STEPS):
        reached = []
        for raw in raws:
            at = raw
            try:
                for earlier in STEPS[:i]:
                    at = earlier(at)
            except ConfigError:
                continue
            reached.append(at)
        assert any(step(r) != r for r in reached), step.__name__


def test_the_steps_reach_the_schema_version_and_are_pure():
    assert len(STEPS) == SCHEMA_VERSION
    assert [s.__name__.split("_")[0] for s in STEPS] == [f"v{i}" for i in range(len(STEPS))]
    assert all(s.__doc__ and "20" in s.__doc__ for s in STEPS)  # each names its change
    raw = yaml.safe_load((FIXTURES / "9605f0b_fedavg.yaml").read_text())
    before = copy.deepcopy(raw)
    for step in STEPS:
        step(raw)
    assert raw == before  # no step changes its argument


def test_a_config_written_now_carries_the_current_version_and_reads_back():
    cfg = from_dict({"algorithm": {"name": "fednas"}, "model": {"name": "darts"}})
    text = config_mod.to_yaml(cfg)
    assert text.splitlines()[0] == f"{VERSION_KEY}: {SCHEMA_VERSION}"
    raw = yaml.safe_load(text)
    assert migrations.version_of(raw) == SCHEMA_VERSION
    assert upgrade(raw) == to_dict(cfg)  # no step runs on a current config
    assert from_stored(raw) == cfg and from_dict(raw) == cfg  # also as a user's file


def test_a_checkpoint_written_now_stores_the_current_version(tmp_path):
    from fednas_mpi.store import read_checkpoint, write_checkpoint

    cfg = from_dict({"run": {"rounds": 3}})
    path = write_checkpoint(
        tmp_path,
        1,
        config_yaml=config_mod.to_yaml(cfg),
        spec={},
        state={},
        server_state={},
        client_states={},
        metrics={},
        stages=["train"],
        partition={},
        attrs={},
    )
    raw = yaml.safe_load(read_checkpoint(path).config_yaml)
    assert raw[VERSION_KEY] == SCHEMA_VERSION and from_stored(raw) == cfg


def test_a_stored_config_of_a_newer_version_is_one_clear_error(tmp_path):
    raw = {VERSION_KEY: SCHEMA_VERSION + 1, "algorithm": {"name": "fedavg", "new_key": 1}}
    source = tmp_path / "run" / "config.yaml"
    with pytest.raises(NewerConfigError) as e:
        from_stored(raw, source=source)
    assert e.value.problems == [
        f"{source}: config schema version {SCHEMA_VERSION + 1} is newer than this "
        f"fednas-mpi reads ({SCHEMA_VERSION}); upgrade fednas-mpi to resume or read this run"
    ]
    with pytest.raises(NewerConfigError):
        stored(raw, source)


def test_resume_of_a_run_stored_by_a_newer_version_names_the_file(tmp_path):
    from fednas_mpi import cli

    run = tmp_path / "run"
    run.mkdir()
    cfg = from_dict({"run": {"rounds": 3}})
    text = config_mod.to_yaml(cfg).replace(
        f"{VERSION_KEY}: {SCHEMA_VERSION}", f"{VERSION_KEY}: {SCHEMA_VERSION + 3}"
    )
    (run / "config.yaml").write_text(text)
    args = cli.build_parser().parse_args(["--resume", str(run)])
    with pytest.raises(ConfigError) as e:
        cli.decide(args)
    (line,) = e.value.problems
    assert str(run / "config.yaml") in line
    assert f"version {SCHEMA_VERSION + 3}" in line and f"({SCHEMA_VERSION})" in line


def test_a_malformed_schema_version_is_an_error_naming_the_file():
    with pytest.raises(ConfigError, match=r"^invalid.*\n  - RUN/config.yaml: schema_version = 'x'"):
        from_stored({VERSION_KEY: "x"}, source="RUN/config.yaml")


def test_a_user_file_with_another_schema_version_is_refused():
    with pytest.raises(ConfigError, match=f"{VERSION_KEY} = 0: this fednas-mpi reads"):
        from_dict({VERSION_KEY: 0, "run": {"rounds": 2}})


def test_a_fedmetanas_run_with_threshold_pruning_is_refused_with_the_reason():
    name = "dc73174_fedmetanas.yaml"
    raw = yaml.safe_load((FIXTURES / name).read_text())
    with pytest.raises(ConfigError) as e:
        from_stored(raw, source=FIXTURES / name)
    (line,) = e.value.problems
    assert line.startswith(f"{FIXTURES / name}: algorithm.fedmetanas.op_threshold")
    assert "806cbd2" in line and "start it again" in line
    # a report still reads its keys
    assert stored(raw)["algorithm"]["fedmetanas"]["op_threshold"] == 0.05
    # another method's run of that time read no fedmetanas section: it upgrades
    assert from_stored(yaml.safe_load((FIXTURES / "dc73174_fednas.yaml").read_text()))


def test_old_checkpoint_entries_are_dropped_by_the_migrations():
    state = {"cells.0.w": 1, "rl.sum": 0, "alphas": 2}
    assert migrations.drop_legacy_entries(state, "state") == {"cells.0.w": 1, "alphas": 2}
    client = {"head.w": 1, "pending.reward": 0}
    assert migrations.drop_legacy_entries(client, "client") == {"head.w": 1}


def test_old_checkpoint_records_read_in_todays_shape():
    """Records a checkpoint stores since a0c99ee (per-client metrics) and 806cbd2 (the
    method time) are absent from older files: unknown there, never made up."""
    nan = float("nan")
    metrics = {"round_time": [2.0, 3.0, 4.0], "global_acc": [0.1, nan, 0.3]}
    upgraded, clients = migrations.checkpoint_records(metrics, None, 3, 0)
    assert clients == {}
    assert upgraded["round_time"] is metrics["round_time"]
    assert set(upgraded) == {"round_time", "global_acc", "method_time"}
    assert len(upgraded["method_time"]) == 3
    assert all(v != v for v in upgraded["method_time"])  # NaN, not the round time
    assert "method_time" not in metrics  # the stored records are not changed
    now = {"round_time": [2.0], "method_time": [1.5]}
    per_client = {"weight": [[1.0, nan]]}
    assert migrations.checkpoint_records(now, per_client, 1, 0) == (now, per_client)
    # a file of today's schema reads as it was written, whatever it holds
    assert migrations.checkpoint_records(metrics, None, 3, SCHEMA_VERSION) == (metrics, {})
    assert migrations.version_in_text(config_mod.to_yaml(from_dict({}))) == SCHEMA_VERSION
    assert migrations.version_in_text("run:\n  rounds: 3\n") == 0
    assert migrations.version_in_text("") == 0


def test_a_spec_from_before_plain_sums_combines_its_inputs():
    from fednas_mpi.nas.spec import ArchSpec

    masks = {c: {"ops": [[True, False]], "combos": [True]} for c in ("normal", "reduce")}
    old = {"masks": masks, "genotype": None}
    assert migrations.stored_spec(old) == {**old, "inputs": "combinations"}
    assert "inputs" not in old
    assert ArchSpec.from_dict(old).inputs == "combinations"
    summed = {**old, "inputs": "sum"}
    assert migrations.stored_spec(summed) is summed
    assert ArchSpec.from_dict(summed).inputs == "sum"


def test_a_run_rewritten_in_the_first_shape_reads_back_as_the_same_run():
    """What the e2e resume test (tests/e2e/test_end_to_end.py) relies on, without MPI: a
    FedAvg run's stored config cut to the keys the first fednas-mpi stored reads back as
    the run's config, but for kernel choices that FedAvg's CNN never uses and the
    execution-only device (cpu, as those runs ran)."""
    from helpers import TINY

    cfg = from_dict(TINY)
    first = set(flatten(yaml.safe_load((FIXTURES / "9605f0b_fedavg.yaml").read_text())))
    now = flatten(yaml.safe_load(config_mod.to_yaml(cfg)))
    old = unflatten({k: v for k, v in now.items() if k in first})
    back = from_stored(old)
    assert config_mod.result_affecting_differences(cfg, back) == [
        "kernels.backend",
        "kernels.supernet",
    ]
    assert (back.kernels.backend, back.kernels.supernet) == ("reference", "reference")
    assert back.runtime.device == "cpu" and cfg.runtime.device == "auto"
