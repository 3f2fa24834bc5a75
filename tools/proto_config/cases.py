"""Error-message cases ported from tests/config (not shipped): each is a raw config (and
``--set`` overrides) with the facts a clear message must carry, as our tests demand them.
A prototype keeps a case when every one of its messages together names every fact."""

from __future__ import annotations

# (id, the test it is ported from, raw, overrides, the facts the message(s) must name)
CASES = [
    ("unknown-top", "test_unknown_top_level_key", {"bogus": 1}, (), ["bogus", "run", "algorithm"]),
    (
        "unknown-nested",
        "test_unknown_nested_key",
        {"run": {"roundz": 3}},
        (),
        ["run.roundz", "rounds"],
    ),
    (
        "wrong-int",
        "test_wrong_type_names_path...",
        {"run": {"rounds": 2.5}},
        (),
        ["run.rounds", "2.5", "integer"],
    ),
    (
        "bool-not-int",
        "test_wrong_type_names_path...",
        {"run": {"rounds": True}},
        (),
        ["run.rounds", "True", "integer"],
    ),
    (
        "list-item",
        "test_wrong_type_names_path...",
        {"model": {"channels": [16, "x"]}},
        (),
        ["model.channels[1]", "'x'", "integer"],
    ),
    (
        "literal",
        "test_wrong_type_names_path...",
        {"data": {"name": "cifar11"}},
        (),
        ["data.name", "cifar11", "'mnist'", "'cifar100'"],
    ),
    (
        "range",
        "test_out_of_range_names_path_value_and_range",
        {"partition": {"eval_fraction": 1.0}},
        (),
        ["partition.eval_fraction", "1.0", ">= 0", "< 1"],
    ),
    (
        "unread-key",
        "test_config_methods: algorithm.lr not read by fedmetanas",
        {"algorithm": {"name": "fedmetanas", "lr": 0.1}, "model": {"name": "darts"}},
        (),
        ["algorithm.lr", "fedavg", "fedmetanas"],
    ),
    (
        "unread-section",
        "test_config_methods: section of method",
        {"algorithm": {"name": "fedavg", "fednas": {"arch_lr": 0.1}}},
        (),
        ["algorithm.fednas", "section", "fednas", "fedavg"],
    ),
    (
        "unknown-method",
        "test_an_unknown_method_lists_the_registry",
        {"algorithm": {"name": "fedmeta"}},
        (),
        ["algorithm.name", "fedmeta", "'fedmetanas'", "'fedavg'"],
    ),
    (
        "all-at-once",
        "test_all_problems_of_a_file_are_reported_together",
        {"run": {"rounds": 0, "seed": "x"}, "partition": {"alpha": -1}, "bogus": 1},
        (),
        ["run.rounds", "run.seed", "partition.alpha", "bogus"],
    ),
    (
        "set-yaml",
        "test_override_values_are_validated_like_file_values",
        {},
        ("model.channels=[8, x]",),
        ["model.channels[1]", "integer"],
    ),
    (
        "cross-field",
        "test_cross_field_clients_per_round_above_num_clients",
        {"federation": {"clients_per_round": 6}, "partition": {"num_clients": 4}},
        (),
        ["federation.clients_per_round", "6", "num_clients", "4"],
    ),
]


def keeps(messages: list[str], facts: list[str]) -> bool:
    text = "\n".join(messages)
    # case-insensitive: "Integer" names the type as clearly as "integer"
    return bool(messages) and all(f.lower() in text.lower() for f in facts)
