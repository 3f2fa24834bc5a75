"""Each method owns its config section and the registry is the one list of methods: keys
the chosen method (or model) does not read are errors, the resolved config holds only what
the run reads, and configs stored before this still read."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from fednas_mpi import config as config_mod
from fednas_mpi.algorithms import REGISTRY, get_algorithm, registry
from fednas_mpi.algorithms.base import Algorithm
from fednas_mpi.config import (
    AlgorithmConfig,
    ConfigError,
    from_dict,
    load,
    method_name,
    option,
    result_affecting_differences,
    to_dict,
)
from fednas_mpi.migrations import from_stored, stored

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
OLD_STORED = Path(__file__).parent / "fixtures" / "stored_config_all_sections.yaml"


def problems(raw=None, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as e:
        from_dict(raw, list(overrides))
    return e.value.problems


# ------------------------------------------------------------- unread keys


def test_a_top_level_key_another_method_reads_is_an_error_naming_key_and_method():
    with pytest.raises(ConfigError) as e:
        load(QUICKSTART, ["algorithm.lr=9.0"])
    (line,) = e.value.problems
    assert line.startswith("algorithm.lr: not read by fedmetanas")
    assert "fedavg, perfedavg, fedrep, fedbabu" in line
    assert "reads algorithm.{name, local_epochs, batch_size, fedmetanas}" in line


def test_a_section_of_another_method_is_an_error_naming_section_and_method():
    with pytest.raises(ConfigError) as e:
        load(QUICKSTART, ["algorithm.fednas.lr=0.1"])
    (line,) = e.value.problems
    assert line.startswith(
        "algorithm.fednas: section of method fednas (sets lr); this run's "
        "method is fedmetanas (algorithm.name)"
    )


def test_the_same_keys_load_on_their_own_methods():
    assert from_dict({"algorithm": {"name": "fedavg"}}, ["algorithm.lr=9.0"]).algorithm.lr == 9.0
    cfg = from_dict(
        {"algorithm": {"name": "fednas"}, "model": {"name": "darts"}, "run": {"rounds": 4}},
        ["algorithm.fednas.lr=0.1"],
    )
    assert cfg.algorithm.fednas.lr == 0.1


def test_the_default_method_is_named_when_the_file_names_none():
    (line,) = problems({"algorithm": {"fedmetanas": {"inner_steps": 3}}})
    assert "this run's method is fedavg (the default of algorithm.name)" in line


def test_unread_keys_are_reported_with_every_other_problem():
    found = problems(
        {
            "run": {"rounds": 0},
            "algorithm": {"name": "fedmetanas", "lr": 1.0, "fedrep": {}, "bogus": 1},
            "model": {"name": "darts"},
        }
    )
    assert [p.split(":")[0].split(" ")[0] for p in found] == [
        "run.rounds",
        "algorithm.lr",
        "algorithm.fedrep",
        "algorithm.bogus",
    ]
    assert "unknown key" in found[-1]


def test_an_unknown_method_lists_the_registry():
    (line,) = problems({"algorithm": {"name": "fedmeta", "lr": 1.0}})
    assert line.startswith("algorithm.name = 'fedmeta': expected one of 'fedavg', ")
    assert all(repr(n) in line for n in registry.names())


def test_meta_fedpnas_reads_only_the_split_of_the_fedpnas_section():
    # its local search and pruning are FedMetaNAS's: FedPNAS's step sizes would change nothing
    (line,) = problems(
        {
            "algorithm": {"name": "meta_fedpnas", "fedpnas": {"inner_lr_w": 0.1}},
            "model": {"name": "darts"},
        }
    )
    assert (
        line.startswith("algorithm.fedpnas.inner_lr_w: unknown key") and "personal_layers" in line
    )
    fp = {
        "algorithm": {"name": "fedpnas", "fedpnas": {"inner_lr_w": 0.1}},
        "model": {"name": "darts"},
    }
    assert from_dict(fp).algorithm.fedpnas.inner_lr_w == 0.1


def test_a_section_shared_by_several_methods_names_them_all():
    (line,) = problems(
        {
            "algorithm": {"name": "fedpnas", "fedmetanas": {"inner_steps": 1}},
            "model": {"name": "darts"},
        }
    )
    assert "section of methods fedmetanas, meta_fedpnas, meta_perfedrlnas" in line
    cfg = from_dict(
        {
            "algorithm": {
                "name": "meta_fedpnas",
                "fedmetanas": {"inner_steps": 1},
                "fedpnas": {"personal_layers": 2},
            },
            "model": {"name": "darts"},
        }
    )
    assert cfg.algorithm.fedmetanas.inner_steps == 1 and cfg.algorithm.fedpnas.personal_layers == 2


@pytest.mark.parametrize(
    "model, key, value",
    [
        ("darts", "channels", [8]),
        ("darts", "mobilenet", {"width_mult": 0.5}),
        ("cnn", "darts", {"layers": 2}),
        ("mobilenet_v3_small", "hidden", 8),
    ],
)
def test_model_keys_of_another_model_are_errors(model, key, value):
    method = "fedmetanas" if model == "darts" else "fedavg"
    (line,) = problems({"model": {"name": model, key: value}, "algorithm": {"name": method}})
    assert line.startswith(f"model.{key}: read only by model.name ")
    assert f"this run's model is {model!r}" in line


def test_the_model_table_is_declared_with_the_models_and_handed_to_config(monkeypatch):
    import typing

    from fednas_mpi.models import catalogue

    assert registry.MODELS is catalogue.MODELS and not hasattr(config_mod, "MODEL_READS")
    names = typing.get_args(typing.get_type_hints(config_mod.ModelConfig)["name"])
    assert [m.name for m in catalogue.MODELS] == list(names)
    fields = {f.name for f in dataclasses.fields(config_mod.ModelConfig)}
    assert all(set(m.reads) <= fields for m in catalogue.MODELS)
    # config reads the table handed to it: a model that reads one more key accepts it
    wider = tuple(
        catalogue.Model(m.name, (*m.reads, "hidden"), m.fixed) if m.name == "darts" else m
        for m in catalogue.MODELS
    )
    raw = {"algorithm": {"name": "fednas"}, "model": {"name": "darts", "hidden": 8}}
    with pytest.raises(ConfigError, match="model.hidden: read only by model.name cnn;"):
        from_dict(raw)
    monkeypatch.setattr(registry, "MODELS", wider)
    assert to_dict(from_dict(raw))["model"]["hidden"] == 8


def test_a_method_reading_a_section_it_did_not_register_fails_loudly():
    cfg = load(QUICKSTART)
    with pytest.raises(AttributeError):
        cfg.algorithm.fednas  # noqa: B018 - the lookup is the test


# ------------------------------------------------------------- resolved config


def test_the_resolved_config_holds_only_what_the_run_reads():
    d = to_dict(load(QUICKSTART))
    assert set(d["algorithm"]) == {"name", "local_epochs", "batch_size", "fedmetanas"}
    assert set(d["model"]) == {"name", "darts"}
    # one method's keys (with fedmetanas's arch_update block), not every method's
    # (and its schema_version and kernels.compile lines)
    assert len(config_mod.to_yaml(load(QUICKSTART)).splitlines()) < 112
    fixed = to_dict(from_dict({"algorithm": {"name": "fedrep"}}))
    assert set(fixed["algorithm"]) == {
        "name",
        "local_epochs",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "fedrep",
    }
    assert set(fixed["model"]) == {"name", "channels", "hidden"}


def test_the_resolved_config_loads_back_strictly_to_the_same_config():
    for f in (QUICKSTART, ROOT / "configs/paper/cifar10/perfedavg.yaml"):
        cfg = load(f)
        assert from_dict(yaml.safe_load(config_mod.to_yaml(cfg))) == cfg


def test_a_different_method_is_a_result_affecting_difference():
    a = load(QUICKSTART)
    b = from_dict({**to_dict(a), "algorithm": {"name": "fednas"}})
    diffs = result_affecting_differences(a, b)
    assert "algorithm.name" in diffs and "algorithm.fedmetanas.inner_steps" in diffs
    assert "algorithm.fednas.lr" in diffs


# ------------------------------------------------------------- stored configs


def test_a_config_stored_before_method_sections_reads():
    old = yaml.safe_load(OLD_STORED.read_text())
    assert {"fednas", "perfedavg", "random_nas", "lr"} <= set(old["algorithm"])
    with pytest.raises(ConfigError):
        from_dict(old)  # as a user's file: every other method's section is an error
    cfg = from_stored(old)
    assert cfg == from_dict(
        {
            "algorithm": {"name": "fedmetanas"},
            "model": {"name": "darts"},
            "run": {"rounds": 2},
            "kernels": {"supernet": "reference"},  # what runs before the key ran
        }
    )
    assert set(to_dict(cfg)["algorithm"]) == {"name", "local_epochs", "batch_size", "fedmetanas"}
    with pytest.raises(ConfigError, match="algorithm.lr: not read by fedmetanas"):
        from_stored(old, ["algorithm.lr=1.0"])  # overrides stay strict


def test_resume_from_a_run_directory_whose_config_yaml_is_old_style(tmp_path):
    from fednas_mpi import cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OLD_STORED.read_text())
    args = cli.build_parser().parse_args(["--resume", str(run)])
    cfg, _, ckpt = cli.decide(args)
    assert ckpt is None and cfg.algorithm.name == "fedmetanas"
    assert set(yaml.safe_load((run / "config.yaml").read_text())["algorithm"]) == {
        "name",
        "local_epochs",
        "batch_size",
        "fedmetanas",
    }


def test_resume_from_a_checkpoint_whose_stored_config_is_old_style(tmp_path):
    from fednas_mpi import cli
    from fednas_mpi.store import write_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    write_checkpoint(
        run,
        1,
        config_yaml=OLD_STORED.read_text(),
        spec={},
        state={},
        server_state={},
        client_states={},
        metrics={},
        stages=["x"],
        partition={},
        attrs={},
    )
    args = cli.build_parser().parse_args(["--resume", str(run), "--set", "run.rounds=5"])
    cfg, _, ckpt = cli.decide(args)
    assert ckpt.round == 1 and cfg.run.rounds == 5 and cfg.algorithm.name == "fedmetanas"
    # the same config, written new-style, agrees with the run's old-style one
    given = tmp_path / "given.yaml"
    given.write_text(config_mod.to_yaml(from_stored(yaml.safe_load(OLD_STORED.read_text()))))
    args = cli.build_parser().parse_args([str(given), "--out", str(run), "--resume"])
    assert cli.decide(args)[0] == from_stored(yaml.safe_load(OLD_STORED.read_text()))


def test_report_reads_an_old_style_stored_config_like_a_new_one():
    old = config_mod.flatten(stored(yaml.safe_load(OLD_STORED.read_text())))
    new = config_mod.flatten(to_dict(from_stored(yaml.safe_load(OLD_STORED.read_text()))))
    # keys added after the fixture was written: the migrations record the values that
    # reproduce it (run.test_subset 0: the whole test set; arch_update client: the
    # clients' own optimiser of the logits; prune_rule gap: the fixed logit gap;
    # derived_training maml: Algorithm 1 goes on after the derivation; derive_rule
    # logits: the argmax of the logits; kernels.compile off: eager cells) ...
    recorded = {
        "kernels.compile": "off",
        "run.test_subset": 0,
        "algorithm.fedmetanas.arch_update": "client",
        "algorithm.fedmetanas.prune_rule": "gap",
        "algorithm.fedmetanas.derived_training": "maml",
        "algorithm.fedmetanas.derive_rule": "logits",
    }
    # ... and the keys those switches leave unread take their defaults
    unread = {
        "algorithm.fedmetanas.client_arch_lr": 0.5,
        "algorithm.fedmetanas.server_arch_optimizer": "adam",
        "algorithm.fedmetanas.server_arch_lr": 0.1,
        "algorithm.fedmetanas.server_arch_betas": [0.9, 0.99],
        "algorithm.fedmetanas.server_arch_tau": 1e-3,
        "algorithm.fedmetanas.prune_z": 2.0,
        "algorithm.fedmetanas.derived_lr": 0.025,
        "algorithm.fedmetanas.derived_lr_min": 0.001,
        "algorithm.fedmetanas.derived_momentum": 0.9,
        "algorithm.fedmetanas.derived_weight_decay": 3e-4,
    }
    assert {k: old[k] for k in recorded} == recorded
    assert {k: v for k, v in new.items() if k not in unread} == old
    assert {k: new[k] for k in unread} == unread


# ------------------------------------------------------------- one registry


def test_the_registry_is_the_one_list_of_methods():
    names = list(registry.names())
    assert sorted(REGISTRY) == sorted(names)
    assert list(config_mod.NAS_METHODS) == [m.name for m in registry.METHODS if m.nas]
    for m in registry.METHODS:
        assert get_algorithm(m.name) is m.cls and m.cls.name == m.name
        assert (
            from_dict(
                {"algorithm": {"name": m.name}, "model": {"name": "darts" if m.nas else "cnn"}}
            ).algorithm.name
            == m.name
        )
    reference = (ROOT / "docs" / "configuration.md").read_text()
    table = re.findall(r"^\| `(\w+)` \| (?:darts|cnn)", reference, flags=re.M)
    assert table == names
    # lists elsewhere derive from the registry
    from methods import EXTRA
    from methods import METHODS as GPU_METHODS

    from fednas_mpi.export.build import FIXED, MIXTURE, PATH

    assert list(GPU_METHODS) == names and set(EXTRA) <= set(names)
    assert sorted(FIXED + MIXTURE + PATH) == sorted(names)
    bench = ast.parse((ROOT / "bench" / "compare_methods.py").read_text())
    literal_lists = [
        n
        for n in ast.walk(bench)
        if isinstance(n, (ast.Tuple, ast.List))
        and sum(isinstance(e, ast.Constant) and e.value in names for e in n.elts) > 2
    ]
    assert not literal_lists, "bench/compare_methods.py lists methods by hand"


def test_every_method_config_is_a_dataclass_of_its_own_module():
    for m in registry.METHODS:
        for key, cls in m.sections.items():
            assert dataclasses.is_dataclass(cls)
            assert cls.__module__ == f"fednas_mpi.algorithms.configs.{key}", (m.name, key)


def test_every_method_algorithm_config_is_a_plain_class_of_its_config_module():
    # written in the method's config module (meta variants beside their base method's),
    # not generated: importable by its module and name, so pickle (how a config travels
    # between ranks) finds it
    for m in registry.METHODS:
        cls = m.config
        assert issubclass(cls, AlgorithmConfig) and cls.__qualname__ == cls.__name__
        assert cls.__module__.startswith("fednas_mpi.algorithms.configs."), m.name
        module = __import__(cls.__module__, fromlist=[cls.__name__])
        assert getattr(module, cls.__name__) is cls
        assert cls().name == m.name and m.keys[:3] == ("name", "local_epochs", "batch_size")
    made_here = [
        n
        for n, v in vars(registry).items()
        if isinstance(v, type) and v.__module__ == registry.__name__
    ]
    assert made_here == ["Method"], f"classes made in the registry: {made_here}"


@pytest.mark.parametrize("method", registry.names())
def test_a_config_of_every_method_pickles_to_an_equal_config(method):
    import pickle

    nas = registry.method(method).nas
    cfg = from_dict(
        {"algorithm": {"name": method}, "model": {"name": "darts" if nas else "cnn"}},
        ["run.rounds=4"],
    )
    back = pickle.loads(pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == cfg and type(back.algorithm) is registry.method(method).config
    assert to_dict(back) == to_dict(cfg)


@dataclasses.dataclass(kw_only=True)
class ToyConfig:
    steps: int = option(3, "Toy steps.", ge=1)


@dataclasses.dataclass(kw_only=True)
class ToyAlgorithmConfig(AlgorithmConfig):
    name: str = method_name("toy")
    toy: ToyConfig = dataclasses.field(default_factory=ToyConfig)


def test_a_toy_method_is_one_module_and_one_registry_line(monkeypatch):
    class Toy(Algorithm):
        name = "toy"

    monkeypatch.setattr(
        registry,
        "METHODS",
        (*registry.METHODS, registry.Method("toy", Toy, ToyAlgorithmConfig, nas=False)),
    )
    assert registry.method("toy").sections == {"toy": ToyConfig}
    cfg = from_dict({"algorithm": {"name": "toy", "toy": {"steps": 5}}})
    assert cfg.algorithm.toy.steps == 5 and get_algorithm("toy") is Toy
    assert to_dict(cfg)["algorithm"] == {
        "name": "toy",
        "local_epochs": 1,
        "batch_size": 32,
        "toy": {"steps": 5},
    }
    with pytest.raises(ConfigError, match="algorithm.toy.steps = 0: out of range"):
        from_dict({"algorithm": {"name": "toy", "toy": {"steps": 0}}})
    with pytest.raises(ConfigError, match="algorithm.toy: section of method toy"):
        from_dict({"algorithm": {"name": "fedavg", "toy": {"steps": 5}}})
    assert "`algorithm.toy.steps`" in config_mod.reference_markdown()
    assert "| `toy` |" in config_mod.methods_markdown()
