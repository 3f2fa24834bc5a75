"""Published cells and genotype loading (``nas.published``): each published cell is the
paper's list, builds the discrete network of exactly its edges and ops, trains a round
through ``random_nas`` and round-trips through JSON; a genotype that cannot be read or does
not fit the network is refused with a message naming what and where."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import client_data

from fednas_mpi.algorithms import DataInfo, RoundContext, get_algorithm
from fednas_mpi.config import from_dict
from fednas_mpi.nas import CELL_TYPES, PRIMITIVES, CellSpace, sampled_spec
from fednas_mpi.nas.published import (
    PUBLISHED,
    GenotypeError,
    darts_cell,
    genotype_spec,
    load_genotype,
    published_genotype,
)

SPACE = CellSpace(4, 2)


def _cfg(genotype: str, nodes: int = 4, **darts):
    return from_dict(
        {
            "run": {"seed": 3, "rounds": 2},
            "model": {
                "name": "darts",
                "darts": {
                    "init_channels": 4,
                    "layers": 3,
                    "nodes": nodes,
                    "input_k": 2,
                    "stem_multiplier": 1,
                    **darts,
                },
            },
            "algorithm": {
                "name": "random_nas",
                "local_epochs": 1,
                "batch_size": 8,
                "random_nas": {"genotype": genotype},
            },
            "partition": {"num_clients": 4},
            "federation": {"clients_per_round": 2},
        }
    )


def test_the_four_published_cells_are_there_with_their_sources():
    assert {"darts_v1", "darts_v2", "pc_darts", "p_darts"} <= set(PUBLISHED)
    for cell in PUBLISHED.values():
        assert "github.com/" in cell.source and "20" in cell.source
        assert len(cell.normal) == len(cell.reduce) == 8


def test_darts_v2_reads_as_the_paper_draws_it():
    # DARTS (Liu et al. 2019), Figure 4 (normal) and 5 (reduction), written out by hand
    g = published_genotype("darts_v2")
    assert g["text"].splitlines() == [
        "normal: s2 = sep_conv_3x3(s0) + sep_conv_3x3(s1); "
        "s3 = sep_conv_3x3(s0) + sep_conv_3x3(s1); "
        "s4 = skip_connect(s0) + sep_conv_3x3(s1); "
        "s5 = skip_connect(s0) + dil_conv_3x3(s2)",
        "reduce: s2 = max_pool_3x3(s0) + max_pool_3x3(s1); "
        "s3 = max_pool_3x3(s1) + skip_connect(s2); "
        "s4 = max_pool_3x3(s0) + skip_connect(s2); "
        "s5 = max_pool_3x3(s1) + skip_connect(s2)",
    ]
    assert g["normal"]["concat"] == g["reduce"]["concat"] == [2, 3, 4, 5]


def test_darts_cell_orders_inputs_and_refuses_odd_lists():
    cell = darts_cell((("sep_conv_3x3", 1), ("skip_connect", 0)))
    assert cell == {
        "nodes": [
            {"inputs": [{"op": "skip_connect", "input": 0}, {"op": "sep_conv_3x3", "input": 1}]}
        ],
        "concat": [2],
    }
    with pytest.raises(GenotypeError, match="do not split"):
        darts_cell((("sep_conv_3x3", 1),))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_published_cell_builds_exactly_its_edges_with_weight_one(name):
    spec = genotype_spec(SPACE, published_genotype(name), name)
    algo = get_algorithm("random_nas")(_cfg(name), DataInfo((1, 8, 8), 10))
    net = algo.build(spec.to_dict())
    cell = PUBLISHED[name]
    for kind, pairs in (("normal", cell.normal), ("reduce", cell.reduce)):
        want = {(j // 2, i, op) for j, (op, i) in enumerate(pairs)}
        layer = next(c for c in net.cells if c.kind == kind)
        got = {
            (int(key.split("_")[0]), int(key.split("_")[1]), op)
            for key, ops in layer.edges.items()
            for op in ops
        }
        # parameter-free ops have modules too; "none" never appears
        assert got == want, (name, kind)
        op_w, coefs = net.mixing_weights(kind)
        for j, i, op in want:
            assert op_w[SPACE.edge(j, i), PRIMITIVES.index(op)] == 1.0
            assert coefs[j][i] == 1.0
        for j in range(SPACE.nodes):  # the inputs a node does not read weigh 0
            assert float(coefs[j].detach().sum()) == 2.0


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_published_cell_trains_a_round_through_random_nas(name):
    algo = get_algorithm("random_nas")(_cfg(name), DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    assert gm.spec["genotype"]["normal"] == published_genotype(name)["normal"]
    ctx = RoundContext(round=0, seed=3, stage="train", rounds=2)
    res = algo.client_update(gm, client_data(cid=1, n=16), ctx, None)
    assert set(res.state) == set(gm.state) and math.isfinite(res.metrics["train_loss"])
    moved = [k for k in gm.state if not torch.equal(gm.state[k], res.state[k])]
    assert any(k.startswith("cells.") for k in moved)
    new = algo.server_step(gm, res.state, {}, ctx)
    other = client_data(cid=2)
    loss, acc = algo.evaluate(new, other.train_x, other.train_y)
    assert math.isfinite(loss) and 0.0 <= acc <= 1.0


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_cells_round_trip_through_json_files_and_run_directories(name, tmp_path):
    g = published_genotype(name)
    (tmp_path / "g.json").write_text(json.dumps(g))
    assert load_genotype(str(tmp_path / "g.json"))[0] == g
    run = tmp_path / "run"
    run.mkdir()
    (run / "genotype.json").write_text(json.dumps(g, indent=2))
    assert load_genotype(str(run)) == (g, str(run / "genotype.json"))
    # a checkpoint's spec holds the genotype under "genotype"
    (tmp_path / "spec.json").write_text(json.dumps(genotype_spec(SPACE, g).to_dict()))
    assert load_genotype(str(tmp_path / "spec.json"))[0] == g
    got, where = load_genotype(name)
    assert got == g and where == name


def test_a_sampled_genotype_gives_back_the_masks_it_was_drawn_with():
    # sample_genotype builds genotype and masks together: genotype_spec must agree with it
    for seed in range(5):
        drawn = sampled_spec(SPACE, torch.Generator().manual_seed(seed))
        again = genotype_spec(SPACE, drawn.genotype.to_dict())
        for c in CELL_TYPES:
            assert again.masks[c] == drawn.masks[c], (seed, c)


def _bad(mutate) -> dict:
    g = published_genotype("darts_v2")
    mutate(g)
    return g


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda g: g["normal"]["nodes"].pop(),
            "normal cell has 3 intermediate nodes; the network has 4",
        ),
        (
            lambda g: g["reduce"]["nodes"][1]["inputs"].pop(),
            r"reduce cell, node s3: inputs \[1\]; the space takes 2",
        ),
        (
            lambda g: g["normal"]["nodes"][0]["inputs"][1].update(input=0),
            r"normal cell, node s2: inputs \[0, 0\]",
        ),
        (
            lambda g: g["normal"]["nodes"][0]["inputs"][1].update(input=3),
            "node s2: input state 3 does not exist there",
        ),
        (
            lambda g: g["normal"]["nodes"][2]["inputs"][0].update(op="conv_7x1_1x7"),
            "node s4: op 'conv_7x1_1x7' is not one of the network's primitives",
        ),
        (lambda g: g["normal"]["nodes"][2]["inputs"][0].update(op="none"), "op 'none' is not one"),
        (lambda g: g["reduce"].update(concat=[4, 5]), r"concatenates states \[4, 5\]"),
    ],
)
def test_a_genotype_that_does_not_fit_is_refused_naming_what_and_where(mutate, message):
    with pytest.raises(GenotypeError, match=message):
        genotype_spec(SPACE, _bad(mutate), "g.json")


def test_a_genotype_outside_restricted_primitives_is_refused():
    space = CellSpace(4, 2, ("none", "max_pool_3x3", "skip_connect"))
    with pytest.raises(GenotypeError, match="op 'sep_conv_3x3'.*max_pool_3x3, skip_connect"):
        genotype_spec(space, published_genotype("darts_v2"), "darts_v2")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a genotype: expected an object with 'normal' and 'reduce'"),
        ('{"normal": {"nodes": []}}', "not a genotype"),
        (
            '{"normal": [], "reduce": {"nodes": []}}',
            "normal cell: expected an object with a 'nodes' list",
        ),
        (
            '{"normal": {"nodes": [{"inputs": [{"op": "skip_connect"}]}]}, '
            '"reduce": {"nodes": []}}',
            r"normal cell, node s2: expected",
        ),
        (
            '{"normal": {"nodes": [], "concat": "all"}, "reduce": {"nodes": []}}',
            "'concat' must be a list",
        ),
    ],
)
def test_a_malformed_file_is_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(GenotypeError, match=message) as e:
        load_genotype(str(path))
    assert str(path) in str(e.value)


def test_unknown_sources_are_refused(tmp_path):
    with pytest.raises(GenotypeError, match="neither a published cell .*darts_v2.*nor a run"):
        load_genotype("darts_v3")
    with pytest.raises(GenotypeError, match="a run directory without genotype.json"):
        load_genotype(str(tmp_path))
