"""Typed configuration: defaults, loading, error reporting, overrides, reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from fednas_mpi.config import (
    Config,
    ConfigError,
    from_dict,
    load,
    parse_override,
    reference,
    result_affecting_differences,
)

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"

# Every leaf key, in declaration order, written out by hand from config.py.
ALL_KEYS = [
    "run.name",
    "run.seed",
    "run.rounds",
    "run.eval_every",
    "run.eval_subset",
    "run.test_subset",
    "run.val_every",
    "run.patience",
    "run.personal_eval_every",
    "run.on_nonfinite",
    "data.name",
    "data.root",
    "data.download",
    "data.resize",
    "data.augment",
    "data.test_fraction",
    "partition.scheme",
    "partition.num_clients",
    "partition.alpha",
    "partition.tau",
    "partition.train_size",
    "partition.eval_size",
    "partition.overlap",
    "partition.eval_fraction",
    "partition.min_train",
    "model.name",
    "model.channels",
    "model.hidden",
    "model.darts.init_channels",
    "model.darts.layers",
    "model.darts.nodes",
    "model.darts.input_k",
    "model.darts.stem_multiplier",
    "model.darts.primitives",
    "model.mobilenet.width_mult",
    "model.mobilenet.min_feature",
    "model.mobilenet.bn_momentum",
    "algorithm.name",
    "algorithm.local_epochs",
    "algorithm.batch_size",
    "algorithm.lr",
    "algorithm.momentum",
    "algorithm.weight_decay",
    *(
        f"algorithm.fedmetanas.{k}"
        for k in (
            "arch_update",
            "client_arch_lr",
            "server_arch_optimizer",
            "server_arch_lr",
            "server_arch_betas",
            "server_arch_tau",
            "inner_steps",
            "tasks_per_epoch",
            "task_lr_w",
            "task_lr_alpha",
            "meta_optimizer",
            "meta_lr_w",
            "weight_lr_min",
            "meta_momentum",
            "weight_decay",
            "arch_optimizer",
            "meta_lr_alpha",
            "arch_betas",
            "grad_clip",
            "temperature_start",
            "temperature_end",
            "temperature_schedule",
            "temperature_floor",
            "arch_warmup_rounds",
            "prune_start",
            "prune_every",
            "prune_gap",
            "combo_prune_gap",
            "settle_rounds",
            "final_round",
            "local_eval_every",
            "derived_training",
            "derived_lr",
            "derived_lr_min",
            "derived_momentum",
            "derived_weight_decay",
            "prune_rule",
            "prune_z",
            "derive_rule",
        )
    ),
    *(
        f"algorithm.fednas.{k}"
        for k in (
            "arch_update",
            "client_arch_lr",
            "server_arch_optimizer",
            "server_arch_lr",
            "server_arch_betas",
            "server_arch_tau",
            "derive_rule",
            "search_rounds",
            "lr",
            "lr_min",
            "momentum",
            "weight_decay",
            "grad_clip",
            "arch_lr",
            "arch_betas",
            "arch_weight_decay",
            "milenas_lambda",
            "local_eval_every",
        )
    ),
    *(f"algorithm.perfedavg.{k}" for k in ("variant", "alpha", "hf_delta", "adapt_steps")),
    "algorithm.fedrep.head_epochs",
    "algorithm.fedrep.head_lr",
    "algorithm.fedbabu.finetune_epochs",
    "algorithm.fedbabu.finetune_lr",
    *(
        f"algorithm.feddsnas.{k}"
        for k in (
            "arch_update",
            "client_arch_lr",
            "server_arch_optimizer",
            "server_arch_lr",
            "server_arch_betas",
            "server_arch_tau",
            "lr",
            "lr_min",
            "momentum",
            "weight_decay",
            "grad_clip",
            "arch_lr",
            "arch_betas",
            "arch_weight_decay",
            "local_eval_every",
        )
    ),
    *(
        f"algorithm.fedrlnas.{k}"
        for k in (
            "lr",
            "lr_min",
            "momentum",
            "weight_decay",
            "grad_clip",
            "epsilon",
            "val_fraction",
            "arch_lr",
            "arch_betas",
            "local_eval_every",
            "baseline_decay",
        )
    ),
    *(
        f"algorithm.perfedrlnas.{k}"
        for k in (
            "lr",
            "lr_min",
            "momentum",
            "weight_decay",
            "grad_clip",
            "epsilon",
            "val_fraction",
            "arch_lr",
            "arch_betas",
            "local_eval_every",
            "time_lambda",
        )
    ),
    *(
        f"algorithm.fedpnas.{k}"
        for k in (
            "arch_update",
            "client_arch_lr",
            "server_arch_optimizer",
            "server_arch_lr",
            "server_arch_betas",
            "server_arch_tau",
            "personal_layers",
            "inner_steps",
            "inner_lr_w",
            "inner_lr_alpha",
            "lr",
            "momentum",
            "weight_decay",
            "arch_lr",
            "grad_clip",
            "temperature_start",
            "temperature_end",
            "tasks_per_epoch",
            "local_eval_every",
        )
    ),
    *(
        f"algorithm.random_nas.{k}"
        for k in (
            "genotype",
            "genotype_seed",
            "lr",
            "lr_min",
            "momentum",
            "weight_decay",
            "local_eval_every",
        )
    ),
    "federation.clients_per_round",
    "runtime.threads_per_rank",
    "runtime.poll_interval_ms",
    "runtime.device",
    "runtime.gpus",
    "runtime.server_device",
    "runtime.tf32",
    "runtime.transport",
    "kernels.backend",
    "kernels.supernet",
    "kernels.compile",
    "store.keep",
    "store.tensorboard",
]


def problems_of(raw, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        from_dict(raw, overrides)
    return info.value.problems


def only_problem(raw, overrides=()) -> str:
    problems = problems_of(raw, overrides)
    assert len(problems) == 1, problems
    return problems[0]


# ---------------------------------------------------------------- defaults and files


def test_defaults_from_empty_mapping():
    cfg = from_dict({})
    assert cfg == Config()
    assert from_dict(None) == Config()
    assert (cfg.run.name, cfg.run.seed, cfg.run.rounds, cfg.run.eval_every) == ("run", 0, 10, 1)
    assert (cfg.data.name, cfg.data.root, cfg.data.test_fraction) == ("digits", "data", 0.2)
    p = cfg.partition
    assert (p.scheme, p.num_clients, p.alpha, p.eval_fraction, p.min_train) == (
        "dirichlet",
        10,
        0.5,
        0.2,
        8,
    )
    assert (cfg.model.name, cfg.model.channels, cfg.model.hidden) == ("cnn", [16, 32], 64)
    a = cfg.algorithm
    assert (a.name, a.local_epochs, a.batch_size, a.lr, a.momentum, a.weight_decay) == (
        "fedavg",
        1,
        32,
        0.05,
        0.9,
        0.0,
    )
    assert cfg.federation.clients_per_round == 5
    assert (cfg.runtime.threads_per_rank, cfg.runtime.poll_interval_ms) == (1, 1.0)
    assert cfg.store.keep == 0


def test_default_lists_are_not_shared_between_instances():
    a, b = from_dict({}), from_dict({})
    a.model.channels.append(99)
    assert b.model.channels == [16, 32]
    assert Config().model.channels == [16, 32]


def test_load_quickstart():
    cfg = load(QUICKSTART)
    assert cfg.run.name == "quickstart"
    assert cfg.run.rounds == 30
    assert cfg.partition.scheme == "dirichlet"
    assert cfg.partition.num_clients == 10
    assert cfg.federation.clients_per_round == 5
    assert cfg.algorithm.local_epochs == 2
    assert cfg.algorithm.batch_size == 16
    assert cfg.model.name == "darts" and cfg.model.darts.nodes == 3
    assert cfg.data.name == "digits"  # from its base: data/digits.yaml
    # keys the file leaves out keep their defaults
    assert cfg.run.eval_every == 1
    assert cfg.algorithm.fedmetanas.meta_momentum == 0.9
    assert cfg.store.keep == 0


def test_load_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  rounds: 4\n  seed: 3\n")
    cfg = load(path, ["run.rounds=7"])
    assert cfg.run.rounds == 7
    assert cfg.run.seed == 3


def test_load_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load(path) == Config()


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "does_not_exist.yaml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert len(info.value.problems) == 1
    assert str(path) in info.value.problems[0]
    assert "cannot read" in info.value.problems[0]


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("run:\n  rounds: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert len(info.value.problems) == 1
    assert str(path) in info.value.problems[0]
    assert "not valid YAML" in info.value.problems[0]


def test_config_error_is_value_error_with_readable_str():
    err = ConfigError(["a.b = 1: bad", "c: worse"])
    assert isinstance(err, ValueError)
    assert err.problems == ["a.b = 1: bad", "c: worse"]
    text = str(err)
    assert text.startswith("invalid configuration (2 problem(s)):")
    assert "  - a.b = 1: bad" in text
    assert "  - c: worse" in text


# ---------------------------------------------------------------- single problems


def test_unknown_top_level_key():
    msg = only_problem({"runn": {"rounds": 3}})
    assert msg.startswith("runn: unknown key")
    assert "at the top level" in msg
    assert ("algorithm, data, federation, kernels, model, partition, run, runtime, store") in msg


def test_unknown_nested_key():
    msg = only_problem({"partition": {"alfa": 0.3}})
    assert msg.startswith("partition.alfa: unknown key")
    assert (
        "known keys in partition: alpha, eval_fraction, eval_size, min_train, num_clients, "
        "overlap, scheme, tau, train_size"
    ) in msg


def test_unknown_key_does_not_hide_valid_siblings():
    # the bad key is reported and nothing else
    msg = only_problem({"run": {"rounds": 3, "bogus": 1}})
    assert msg.startswith("run.bogus: unknown key")


@pytest.mark.parametrize(
    ("raw", "path", "shown", "allowed"),
    [
        ({"run": {"rounds": "ten"}}, "run.rounds", "'ten'", "expected an integer"),
        ({"run": {"rounds": True}}, "run.rounds", "True", "expected an integer"),
        ({"run": {"rounds": 2.5}}, "run.rounds", "2.5", "expected an integer"),
        ({"run": {"seed": 3.0}}, "run.seed", "3.0", "expected an integer"),
        ({"algorithm": {"lr": "fast"}}, "algorithm.lr", "'fast'", "expected a number"),
        ({"algorithm": {"lr": False}}, "algorithm.lr", "False", "expected a number"),
        ({"run": {"name": 5}}, "run.name", "5", "expected a string"),
        ({"model": {"channels": 16}}, "model.channels", "16", "expected a list of an integer"),
        ({"model": {"channels": [16, "x", 32]}}, "model.channels[1]", "'x'", "expected an integer"),
        ({"model": {"channels": [16, 2.5]}}, "model.channels[1]", "2.5", "expected an integer"),
        (
            {"data": {"name": "cifar11"}},
            "data.name",
            "'cifar11'",
            "expected one of 'digits', 'mnist', 'fashion_mnist', 'cifar10', 'cifar100'",
        ),
        (
            {"partition": {"scheme": "pathological"}},
            "partition.scheme",
            "'pathological'",
            "expected one of 'iid', 'dirichlet', 'label_skew'",
        ),
    ],
)
def test_wrong_type_names_path_value_and_expectation(raw, path, shown, allowed):
    msg = only_problem(raw)
    assert msg == f"{path} = {shown}: {allowed}"


@pytest.mark.parametrize("section", ["run", "partition", "model", "store"])
def test_scalar_where_a_section_is_expected(section):
    msg = only_problem({section: 5})
    assert msg == f"{section}: expected a mapping of keys, got 5"


def test_list_where_the_top_level_mapping_is_expected():
    msg = only_problem([1, 2])
    assert msg == "the top level: expected a mapping of keys, got [1, 2]"


def test_null_section_means_defaults():
    assert from_dict({"run": None, "model": None}) == Config()


def test_int_is_accepted_for_float_and_converted():
    cfg = from_dict({"algorithm": {"lr": 1, "weight_decay": 0}})
    assert cfg.algorithm.lr == 1.0 and isinstance(cfg.algorithm.lr, float)
    assert cfg.algorithm.weight_decay == 0.0 and isinstance(cfg.algorithm.weight_decay, float)


@pytest.mark.parametrize(
    ("raw", "path", "shown", "allowed"),
    [
        ({"run": {"rounds": 0}}, "run.rounds", "0", "allowed: >= 1"),
        ({"run": {"eval_every": -2}}, "run.eval_every", "-2", "allowed: >= 1"),
        ({"partition": {"alpha": 0}}, "partition.alpha", "0.0", "allowed: > 0.0"),
        ({"partition": {"alpha": -0.5}}, "partition.alpha", "-0.5", "allowed: > 0.0"),
        (
            {"partition": {"eval_fraction": 1.0}},
            "partition.eval_fraction",
            "1.0",
            "allowed: >= 0.0 and < 1.0",
        ),
        (
            {"partition": {"eval_fraction": -0.1}},
            "partition.eval_fraction",
            "-0.1",
            "allowed: >= 0.0 and < 1.0",
        ),
        (
            {"algorithm": {"momentum": 1.0}},
            "algorithm.momentum",
            "1.0",
            "allowed: >= 0.0 and < 1.0",
        ),
        ({"data": {"test_fraction": 0.0}}, "data.test_fraction", "0.0", "allowed: > 0.0 and < 1.0"),
        ({"store": {"keep": -1}}, "store.keep", "-1", "allowed: >= 0"),
    ],
)
def test_out_of_range_names_path_value_and_range(raw, path, shown, allowed):
    msg = only_problem(raw)
    assert msg == f"{path} = {shown}: out of range; {allowed}"


def test_boundary_values_are_accepted():
    cfg = from_dict(
        {
            "run": {"rounds": 1},
            "partition": {"eval_fraction": 0.0, "alpha": 1e-9},
            "algorithm": {"momentum": 0.0},
            "store": {"keep": 0},
            "runtime": {"threads_per_rank": 0, "poll_interval_ms": 0},
        }
    )
    assert cfg.run.rounds == 1
    assert cfg.partition.eval_fraction == 0.0
    assert cfg.algorithm.momentum == 0.0


def test_empty_channel_list():
    msg = only_problem({"model": {"channels": []}})
    assert msg == "model.channels = []: needs at least 1 element(s)"


def test_cross_field_clients_per_round_above_num_clients():
    msg = only_problem({"partition": {"num_clients": 4}, "federation": {"clients_per_round": 6}})
    assert "federation.clients_per_round = 6" in msg
    assert "partition.num_clients = 4" in msg
    assert "[1, 4]" in msg
    # equal is fine
    cfg = from_dict({"partition": {"num_clients": 4}, "federation": {"clients_per_round": 4}})
    assert cfg.federation.clients_per_round == 4


def test_cross_field_check_uses_default_num_clients():
    msg = only_problem({"federation": {"clients_per_round": 11}})
    assert "federation.clients_per_round = 11" in msg
    assert "partition.num_clients = 10" in msg


# ---------------------------------------------------------------- many problems at once


def test_all_problems_of_a_file_are_reported_together(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "bogus: 1\n"
        "run:\n  rounds: 0\n  seed: abc\n"
        "data:\n  name: cifar11\n"
        "partition:\n  alfa: 0.3\n  eval_fraction: 1.0\n"
        "model:\n  channels: [16, x]\n"
        "algorithm: 3\n"
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    problems = info.value.problems
    expected_starts = [
        "bogus: unknown key",
        "run.rounds = 0: out of range",
        "run.seed = 'abc': expected an integer",
        "data.name = 'cifar11': expected one of 'digits'",
        "partition.alfa: unknown key",
        "partition.eval_fraction = 1.0: out of range",
        "model.channels[1] = 'x': expected an integer",
        "algorithm: expected a mapping of keys, got 3",
    ]
    assert len(problems) == len(expected_starts), problems
    for start in expected_starts:
        assert sum(p.startswith(start) for p in problems) == 1, (start, problems)
    assert f"({len(expected_starts)} problem(s))" in str(info.value)


# ---------------------------------------------------------------- --set overrides


def test_overrides_are_yaml_typed():
    raw = {"run": {"rounds": 3}, "model": {"channels": [4]}}
    cfg = from_dict(
        raw,
        overrides=[
            "run.rounds=20",
            "algorithm.lr=0.125",
            "algorithm.weight_decay=0",
            "model.channels=[8, 16, 32]",
            "partition.scheme=iid",
            "run.name=my run",
            "runtime.poll_interval_ms=2.5",
        ],
    )
    assert cfg.run.rounds == 20 and type(cfg.run.rounds) is int
    assert cfg.algorithm.lr == 0.125
    assert cfg.algorithm.weight_decay == 0.0 and type(cfg.algorithm.weight_decay) is float
    assert cfg.model.channels == [8, 16, 32]
    assert cfg.partition.scheme == "iid"
    assert cfg.run.name == "my run"
    assert cfg.runtime.poll_interval_ms == 2.5
    # the caller's mapping is not modified
    assert raw == {"run": {"rounds": 3}, "model": {"channels": [4]}}


def test_later_override_wins():
    assert from_dict({}, ["run.seed=1", "run.seed=2"]).run.seed == 2


def test_override_creates_missing_section():
    cfg = from_dict({"run": {"rounds": 3}}, ["partition.num_clients=12"])
    assert cfg.partition.num_clients == 12
    assert cfg.run.rounds == 3


def test_override_into_empty_section_of_a_file(tmp_path):
    # `run:` with nothing under it is an empty (null) section, which the loader
    # accepts as "all defaults"; an override into it must work just the same.
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  # rounds: 5\n")
    assert load(path) == Config()
    assert load(path, ["run.rounds=3"]).run.rounds == 3


def test_bool_override_is_typed_and_checked():
    # YAML booleans stay booleans: accepted nowhere an int or a string is expected
    msg = only_problem({}, ["run.rounds=true"])
    assert msg == "run.rounds = True: expected an integer"
    msg = only_problem({}, ["run.name=false"])
    assert msg == "run.name = False: expected a string"


def test_override_values_are_validated_like_file_values():
    assert only_problem({}, ["run.rounds=0"]) == "run.rounds = 0: out of range; allowed: >= 1"
    assert only_problem({}, ["model.channels=[8, a]"]) == (
        "model.channels[1] = 'a': expected an integer"
    )


def test_an_option_yaml_reads_as_a_boolean_is_the_option(tmp_path):
    """YAML 1.1 reads an unquoted ``off`` as False: ``kernels.compile: off`` in a file or
    ``--set kernels.compile=off`` still means the option "off"; a boolean no option is
    spelled as stays an error naming the options."""
    path = tmp_path / "c.yaml"
    path.write_text("kernels:\n  compile: off\n")
    assert load(path).kernels.compile == "off"
    assert from_dict({}, ["kernels.compile=off"]).kernels.compile == "off"
    assert from_dict({}, ["kernels.compile=OFF"]).kernels.compile == "off"
    assert from_dict({"kernels": {"compile": "cells"}}).kernels.compile == "cells"
    assert only_problem({}, ["kernels.compile=on"]) == (
        "kernels.compile = True: expected one of 'off', 'cells'"
    )


@pytest.mark.parametrize("text", ["run.rounds", "=3", "run..x=1", ".rounds=3", "run.=3"])
def test_bad_override_syntax(text):
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    (msg,) = info.value.problems
    assert repr(text) in msg
    assert "expected section.key=value" in msg
    with pytest.raises(ConfigError) as info:
        from_dict({}, [text])
    assert repr(text) in info.value.problems[0]


def test_override_value_that_is_not_yaml():
    with pytest.raises(ConfigError) as info:
        parse_override("model.channels=[1, 2")
    (msg,) = info.value.problems
    assert "'model.channels=[1, 2'" in msg
    assert "not valid YAML" in msg


def test_parse_override_splits_at_first_equals_and_strips_key():
    assert parse_override(" run.name =a=b") == ("run.name", "a=b")
    assert parse_override("run.rounds=12") == ("run.rounds", 12)
    assert parse_override("algorithm.lr=0.5") == ("algorithm.lr", 0.5)
    assert parse_override("model.channels=[1, 2]") == ("model.channels", [1, 2])
    assert parse_override("x.y=true") == ("x.y", True)
    assert parse_override("run.name=") == ("run.name", "")


def test_override_of_unknown_key_is_rejected_with_its_path():
    msg = only_problem({}, ["run.bogus=1"])
    assert msg.startswith("run.bogus: unknown key; known keys in run:")
    msg = only_problem({}, ["partition.alfa=0.1"])
    assert msg.startswith("partition.alfa: unknown key")
    msg = only_problem({}, ["nosuch.key=1"])
    assert msg.startswith("nosuch: unknown key")


def test_override_below_a_scalar_is_rejected():
    # a scalar in the file under the override's path
    msg = only_problem({"run": {"rounds": 5}}, ["run.rounds.x=1"])
    assert msg == "--set run.rounds.x: rounds is not a section"
    msg = only_problem({"run": 5}, ["run.rounds=1"])
    assert msg == "--set run.rounds: run is not a section"
    # no value in the file: the nested mapping reaches the type check instead
    msg = only_problem({}, ["run.rounds.x=1"])
    assert msg == "run.rounds = {'x': 1}: expected an integer"


# ---------------------------------------------------------------- resume compatibility


def test_execution_only_differences_are_ignored():
    a = from_dict({})
    b = from_dict(
        {},
        [
            "runtime.threads_per_rank=4",
            "runtime.poll_interval_ms=0",
            "store.keep=3",
            "run.name=other",
            "run.rounds=99",
        ],
    )
    assert a != b
    assert result_affecting_differences(a, b) == []
    assert result_affecting_differences(b, a) == []


def test_result_affecting_differences_are_reported():
    a = from_dict({})
    b = from_dict({}, ["run.seed=1", "algorithm.lr=0.1", "store.keep=2", "run.rounds=3"])
    assert result_affecting_differences(a, b) == ["run.seed", "algorithm.lr"]


def test_every_other_key_counts_as_result_affecting():
    a = from_dict({})
    b = from_dict(
        {},
        [
            "run.eval_every=2",
            "data.test_fraction=0.3",
            "data.root=elsewhere",
            "partition.scheme=iid",
            "model.channels=[8]",
            "model.hidden=8",
            "federation.clients_per_round=3",
        ],
    )
    assert result_affecting_differences(a, b) == [
        "run.eval_every",
        "data.root",
        "data.test_fraction",
        "partition.scheme",
        "model.channels",
        "model.hidden",
        "federation.clients_per_round",
    ]
    assert result_affecting_differences(a, a) == []


# ---------------------------------------------------------------- reference


def test_reference_lists_every_leaf_key_once():
    rows = reference()
    keys = [r[0] for r in rows]
    assert keys == ALL_KEYS
    assert len(set(keys)) == len(keys)
    for row in rows:
        assert len(row) == 4
        assert all(isinstance(x, str) for x in row)
        assert row[3], f"{row[0]} has no help text"


def test_reference_rows_carry_type_default_and_limits():
    rows = {r[0]: r for r in reference()}
    assert rows["run.rounds"][1:3] == ("an integer", "10")
    assert rows["run.rounds"][3].endswith("(>= 1)")
    assert rows["algorithm.lr"][1:3] == ("a number", "0.05")
    assert rows["algorithm.momentum"][3].endswith("(>= 0.0, < 1.0)")
    assert rows["data.name"][1:3] == (
        "one of 'digits', 'mnist', 'fashion_mnist', 'cifar10', 'cifar100'",
        "'digits'",
    )
    assert rows["partition.scheme"][1] == "one of 'iid', 'dirichlet', 'label_skew'"
    assert rows["model.channels"][2] == "[16, 32]"
    assert rows["run.name"][1:3] == ("a string", "'run'")
