"""The typed architecture spec and genotype (``nas.spec``): the dict/JSON form round-trips
exactly (checkpoints and genotype.json keep their bytes), old specs still read, and the
whole-spec derivations give what the per-cell ones give."""

from __future__ import annotations

import json

import torch

from fednas_mpi.nas import (
    CELL_TYPES,
    ArchSpec,
    CellMasks,
    CellSpace,
    Genotype,
    child_spec,
    darts_spec,
    derive_darts,
    final_spec,
    finalize,
    genotype_of,
    genotype_str,
    sampled_spec,
)

SPACE = CellSpace(3, 2, ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"))


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"{p}_{c}": torch.randn(n, generator=g)
        if p == "beta"
        else torch.randn(SPACE.num_edges, len(SPACE.primitives), generator=g)
        for c in CELL_TYPES
        for p, n in (("alpha", None), ("beta", SPACE.num_combos))
    }


def _initial(inputs: str = "combinations") -> ArchSpec:
    ops, combos = SPACE.full_masks()
    return ArchSpec({c: CellMasks(ops, combos) for c in CELL_TYPES}, inputs)


def test_the_initial_spec_has_the_dict_form_the_methods_always_wrote():
    ops, combos = SPACE.full_masks()
    want = {
        "masks": {c: {"ops": ops, "combos": combos} for c in CELL_TYPES},
        "inputs": "sum",
        "genotype": None,
    }
    assert _initial("sum").to_dict() == want
    assert ArchSpec.from_dict(want) == _initial("sum")
    assert ArchSpec.from_json(_initial().to_json()) == _initial()


def test_final_derivation_matches_the_per_cell_one_byte_for_byte():
    state, spec = _state(), _initial()
    got = final_spec(SPACE, spec, state).to_dict()
    genotype, masks = {}, {}
    for c in CELL_TYPES:
        genotype[c], o, cb = finalize(
            SPACE, state[f"alpha_{c}"], state[f"beta_{c}"], spec.masks[c].ops, spec.masks[c].combos
        )
        masks[c] = {"ops": o, "combos": cb}
    genotype["text"] = genotype_str(genotype)
    want = {"masks": masks, "inputs": "combinations", "genotype": genotype}
    assert json.dumps(got) == json.dumps(want)  # key order too: genotype.json's bytes
    assert json.dumps(got["genotype"], indent=2) == json.dumps(genotype, indent=2)
    again = ArchSpec.from_json(json.dumps(got, sort_keys=True))
    assert json.dumps(again.to_dict()) == json.dumps(want)


def test_darts_child_and_sampled_specs_round_trip():
    state = _state(1)
    darts = darts_spec(SPACE, _initial("sum"), state)
    for c in CELL_TYPES:
        g, o, _ = derive_darts(SPACE, state[f"alpha_{c}"], _initial().masks[c].ops)
        assert darts.genotype.cells[c].to_dict() == g and darts.masks[c].ops == o
    choices = {c: [int(v) for v in state[f"alpha_{c}"].argmax(1)] for c in CELL_TYPES}
    child = child_spec(
        SPACE, _initial("sum"), choices, {c: state[f"alpha_{c}"] for c in CELL_TYPES}
    )
    sampled = sampled_spec(SPACE, torch.Generator().manual_seed(0))
    for spec in (darts, child, sampled):
        d = spec.to_dict()
        assert ArchSpec.from_dict(json.loads(json.dumps(d))) == spec
        assert d["genotype"]["text"] == spec.genotype.text
        assert genotype_of(d) == spec.genotype
    assert all(sum(row) == 1 for c in CELL_TYPES for row in child.masks[c].ops)


def test_old_specs_read_and_fixed_models_have_no_genotype():
    ops, combos = SPACE.full_masks()
    old = {"masks": {c: {"ops": ops, "combos": combos} for c in CELL_TYPES}}
    spec = ArchSpec.from_dict(old)
    assert spec.inputs == "combinations" and spec.genotype is None and spec.prune_log == []
    log = [{"round": 2, "cell": "normal", "edge": "s0->s2", "op": "none", "gap": 0.5}]
    assert ArchSpec.from_dict({**old, "prune_log": log}).to_dict()["prune_log"] == log
    assert genotype_of({}) is None and genotype_of({"genotype": None}) is None


def test_genotype_text_is_the_compact_form():
    g = Genotype.from_dict(
        {"normal": {"nodes": [{"inputs": [{"op": "skip_connect", "input": 0}]}], "concat": [2]}}
    )
    assert g.text == "normal: s2 = skip_connect(s0)"
    assert g.to_dict()["text"] == g.text
