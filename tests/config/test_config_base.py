"""``base:`` in config files, the data/partition config files, and the new data defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from fednas_mpi.algorithms import registry
from fednas_mpi.config import ConfigError, from_dict, load, load_raw

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_new_data_and_partition_defaults():
    cfg = from_dict({})
    d, p = cfg.data, cfg.partition
    assert (d.download, d.resize, d.augment) == (False, 0, False)
    assert (p.tau, p.train_size, p.eval_size, p.overlap) == (4, 0, 0, False)


def test_base_is_merged_under_the_file(tmp_path):
    write(
        tmp_path / "bases" / "common.yaml",
        "run: {seed: 5, rounds: 7}\nmodel: {channels: [4, 8, 16], hidden: 9}\n",
    )
    cfg = load(
        write(
            tmp_path / "run.yaml",
            "base: bases/common.yaml\nrun: {rounds: 3}\nmodel: {channels: [2]}\n",
        )
    )
    assert (cfg.run.seed, cfg.run.rounds) == (5, 3)  # mappings merge key by key
    assert cfg.model.channels == [2] and cfg.model.hidden == 9  # lists are replaced whole


def test_bases_in_order_and_nested_relative_to_each_file(tmp_path):
    write(tmp_path / "a" / "root.yaml", "run: {seed: 1, name: root}\n")
    write(tmp_path / "a" / "mid.yaml", "base: root.yaml\nrun: {seed: 2}\n")
    write(tmp_path / "b" / "other.yaml", "run: {seed: 3}\ndata: {name: mnist}\n")
    cfg = load(
        write(
            tmp_path / "c" / "top.yaml",
            "base: [../a/mid.yaml, ../b/other.yaml]\nrun: {rounds: 4}\n",
        )
    )
    assert (cfg.run.name, cfg.run.seed, cfg.run.rounds, cfg.data.name) == ("root", 3, 4, "mnist")
    cfg = load(write(tmp_path / "c" / "rev.yaml", "base: [../b/other.yaml, ../a/mid.yaml]\n"))
    assert cfg.run.seed == 2  # later bases win over earlier ones


def test_empty_section_keeps_the_base_section(tmp_path):
    write(tmp_path / "base.yaml", "run: {seed: 9}\n")
    assert load(write(tmp_path / "f.yaml", "base: base.yaml\nrun:\n")).run.seed == 9


def test_overrides_apply_after_bases(tmp_path):
    write(tmp_path / "base.yaml", "run: {seed: 9}\n")
    cfg = load(write(tmp_path / "f.yaml", "base: base.yaml\n"), ["run.seed=11"])
    assert cfg.run.seed == 11


def test_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: [c.yaml]\n")
    write(tmp_path / "c.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "a.yaml")
    (msg,) = info.value.problems
    assert msg.startswith("base: cycle of config files:")
    assert msg.count("a.yaml") == 2 and "b.yaml" in msg and "c.yaml" in msg
    write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load(tmp_path / "self.yaml")


def test_a_base_used_twice_is_not_a_cycle(tmp_path):
    write(tmp_path / "shared.yaml", "run: {seed: 4}\n")
    write(tmp_path / "x.yaml", "base: shared.yaml\n")
    assert load(write(tmp_path / "f.yaml", "base: [shared.yaml, x.yaml]\n")).run.seed == 4


def test_unknown_key_in_a_base_is_named(tmp_path):
    write(tmp_path / "base.yaml", "partition: {alfa: 0.3}\n")
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path / "f.yaml", "base: base.yaml\nrun: {seed: 1}\n"))
    (msg,) = info.value.problems
    assert msg.startswith("partition.alfa: unknown key")


def test_missing_or_bad_base_names_both_files(tmp_path):
    f = write(tmp_path / "f.yaml", "base: nope.yaml\n")
    with pytest.raises(ConfigError) as info:
        load(f)
    assert str(tmp_path / "nope.yaml") in str(info.value) and "base of" in str(info.value)
    assert str(f.resolve()) in str(info.value)
    write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of keys"):
        load(write(tmp_path / "g.yaml", "base: list.yaml\n"))
    with pytest.raises(ConfigError, match="expected a file name or a list of file names"):
        load(write(tmp_path / "h.yaml", "base: {a: 1}\n"))
    write(tmp_path / "broken.yaml", "run: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load(write(tmp_path / "i.yaml", "base: broken.yaml\n"))


def test_file_without_base_is_unchanged(tmp_path):
    raw = load_raw(write(tmp_path / "f.yaml", "run: {seed: 2}\n"))
    assert raw == {"run": {"seed": 2}}


# ---------------------------------------------------------------- the shipped configs

DATASETS = ["mnist", "fashion_mnist", "cifar10", "cifar100"]
SETTINGS = {
    "dir0.3": ("dirichlet", 0.3, None),
    "dir0.1": ("dirichlet", 0.1, None),
    "tau8": ("label_skew", None, 8),
    "tau4": ("label_skew", None, 4),
}


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_paper_configs(dataset, setting):
    cfg = load(CONFIGS / "paper" / dataset / f"fedavg-cnn-{setting}.yaml")
    scheme, alpha, tau = SETTINGS[setting]
    p = cfg.partition
    assert cfg.data.name == dataset and p.scheme == scheme
    assert alpha is None or p.alpha == alpha
    assert tau is None or p.tau == tau
    # section 5.1: 100 clients, 600 + 600 images each, 5 clients per round, 5 local epochs
    assert (p.num_clients, p.train_size, p.eval_size, p.overlap) == (100, 600, 600, True)
    assert cfg.federation.clients_per_round == 5 and cfg.algorithm.local_epochs == 5
    assert cfg.data.augment == dataset.startswith("cifar")
    assert cfg.run.name == f"{dataset}_{setting}"


@pytest.mark.parametrize("name", ["digits/fedavg-cnn-dir0.1", "fashion_mnist/fedavg-cnn-20clients"])
def test_cpu_scale_configs(name):
    cfg = load(CONFIGS / "cpu" / f"{name}.yaml")
    assert cfg.data.name == name.split("/")[0]
    assert (cfg.partition.scheme, cfg.partition.alpha) == ("dirichlet", 0.1)
    assert cfg.algorithm.name == "fedavg" and cfg.model.name == "cnn"
    assert cfg.partition.train_size > 0 and not cfg.partition.overlap


def test_base_files_load_alone():
    for path in (
        sorted((CONFIGS / "data").glob("*.yaml"))
        + sorted((CONFIGS / "partition").glob("*.yaml"))
        + [CONFIGS / "cpu" / "setup.yaml", CONFIGS / "paper" / "setup.yaml"]
    ):
        load(path)


# every searching method of the registry beside FedMetaNAS, which the others are compared to
BASELINES = [m for m in registry.SEARCH_METHODS if m != "fedmetanas"]


@pytest.mark.parametrize("method", BASELINES)
def test_every_baseline_has_cpu_and_paper_scale_configs(method):
    for scale, dataset in (
        ("cpu", "digits"),
        ("cpu", "fashion_mnist"),
        ("paper", "cifar10"),
        ("paper", "cifar100"),
    ):
        cfg = load(CONFIGS / scale / dataset / f"{method}.yaml")
        assert cfg.algorithm.name == method and cfg.model.name == "darts"
        assert cfg.data.name == dataset and cfg.run.name == f"{method}_{dataset}"
        # same data, partition, clients, rounds and search space as FedMetaNAS there
        fm = load(CONFIGS / scale / dataset / "fedmetanas.yaml")
        assert (cfg.partition, cfg.federation, cfg.run.rounds, cfg.data, cfg.model) == (
            fm.partition,
            fm.federation,
            fm.run.rounds,
            fm.data,
            fm.model,
        )
    paper = load(CONFIGS / "paper" / "cifar10" / f"{method}.yaml")
    assert paper.partition.num_clients == 100 and paper.model.darts.layers == 8
