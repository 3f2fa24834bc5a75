"""DARTS-PT's selection given the scores (``nas.perturbation``): the op whose removal hurts
most wins whatever the logits say, ties go to the loss, then the logit; ``none`` is never
chosen; input combinations and DARTS's summed inputs are chosen the same way; every choice
logs its drop and the runner-up's."""

from __future__ import annotations

import torch

from fednas_mpi.nas import CELL_TYPES, ArchSpec, CellMasks, CellSpace, Genotype
from fednas_mpi.nas.perturbation import (
    CellScores,
    derive_darts_perturbation,
    finalize_perturbation,
    perturbation_spec,
    rank,
)

PRIMS = ("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3")
SPACE = CellSpace(2, 2, PRIMS)  # edges: node 0 <- s0, s1; node 1 <- s0, s1, s2
N = 100


def _scores(op_correct, input_correct, op_loss=None, input_loss=None) -> CellScores:
    oc = torch.tensor(op_correct, dtype=torch.long)
    ic = torch.tensor(input_correct, dtype=torch.long)
    return CellScores(
        N,
        80,
        50.0,
        oc,
        torch.full(oc.shape, 50.0, dtype=torch.float64) if op_loss is None else op_loss,
        ic,
        torch.full(ic.shape, 50.0, dtype=torch.float64) if input_loss is None else input_loss,
    )


def _planted() -> tuple[list[list[int]], list[int]]:
    """Per edge the planted op (the one whose removal leaves fewest correct): sep_conv on
    edges 0, 2, 4; avg_pool on 1 and 3 ("none" scores worst, and must still lose)."""
    best = [3, 2, 3, 2, 3]
    rows = []
    for b in best:
        row = [0, 78, 79, 79]  # "none": would "win" if it were a candidate
        row[b] = 60
        rows.append(row)
    return rows, best


def test_rank_orders_by_correct_then_loss_then_logit_then_index():
    correct = [5, 3, 3, 3, 3]
    loss = [0.0, 1.0, 2.0, 2.0 + 1e-13, 2.0]  # 1e-13: float rounding of sums, not signal
    logits = [0.0, 0.0, 0.1, 0.0, 0.5]
    assert rank(correct, loss, logits, range(5)) == [4, 2, 3, 1, 0]
    assert rank(correct, loss, logits, [0, 3]) == [3, 0]


def test_planted_best_op_wins_against_the_logits_and_none_never_wins():
    rows, best = _planted()
    alpha = torch.zeros(5, 4)
    alpha[:, 1] = 5.0  # the logits all prefer skip_connect
    ops, combos = SPACE.full_masks()
    scores = _scores(rows, [70, 75, 79, 78])  # node 1: combination (s0, s1) hurts most
    cell, new_ops, new_combos = finalize_perturbation(
        SPACE, alpha, torch.zeros(SPACE.num_combos), ops, combos, scores
    )
    chosen = {(j, x["input"]): x["op"] for j, n in enumerate(cell["nodes"]) for x in n["inputs"]}
    assert chosen == {
        (0, 0): PRIMS[best[0]],
        (0, 1): PRIMS[best[1]],
        (1, 0): PRIMS[best[2]],
        (1, 1): PRIMS[best[3]],
    }
    # node 0 has one combination (unscored); node 1 the one whose removal hurts most
    assert new_combos == [True, True, False, False]
    assert "perturbation" not in cell["nodes"][0]
    assert cell["nodes"][1]["perturbation"] == {
        "drop": 0.05,
        "loss_rise": 0.0,
        "runner_up": ["s1", "s2"],
        "runner_up_drop": 0.02,
    }
    # each chosen input logs its drop, loss rise and the runner-up's
    why = cell["nodes"][0]["inputs"][0]["perturbation"]
    assert why == {
        "drop": 0.2,
        "loss_rise": 0.0,
        "runner_up": "skip_connect",
        "runner_up_drop": 0.02,
    }
    assert sum(map(sum, new_ops)) == 4 and not any(r[0] for r in new_ops)


def test_ties_in_accuracy_go_to_the_loss_then_to_the_logit():
    ops, combos = SPACE.full_masks()
    rows = [[0, 70, 70, 70]] * 5
    loss = torch.full((5, 4), 50.0, dtype=torch.float64)
    loss[0, 2] = 60.0  # edge 0: avg_pool by the loss
    alpha = torch.zeros(5, 4)
    alpha[1, 3] = 1.0  # edge 1: all tied but the logit: sep_conv
    cell, _, _ = finalize_perturbation(
        SPACE, alpha, torch.zeros(4), ops, combos, _scores(rows, [70] * 4, loss)
    )
    node0 = cell["nodes"][0]["inputs"]
    assert [x["op"] for x in node0] == ["avg_pool_3x3", "sep_conv_3x3"]
    assert node0[0]["perturbation"]["loss_rise"] == 0.1
    # all else equal: the lowest index among the live real ops
    assert cell["nodes"][1]["inputs"][0]["op"] == "skip_connect"


def test_pruned_ops_and_combinations_take_no_part():
    rows, _ = _planted()
    ops, combos = SPACE.full_masks()
    ops[0] = [True, True, True, False]  # edge 0's planted sep_conv was pruned
    combos[1] = False  # node 1's (s0, s1), the combination that would win
    cell, _, new_combos = finalize_perturbation(
        SPACE, torch.zeros(5, 4), torch.zeros(4), ops, combos, _scores(rows, [70, 60, 79, 78])
    )
    assert cell["nodes"][0]["inputs"][0]["op"] == "skip_connect"
    assert new_combos == [True, False, False, True]


def test_darts_sum_keeps_the_k_inputs_whose_removal_hurts_most():
    rows, best = _planted()
    ops, _ = SPACE.full_masks()
    # node 1: removing s2's edge hurts most, then s0's; s1's least
    scores = _scores(rows, [70, 70, 75, 79, 72])
    cell, new_ops, new_combos = derive_darts_perturbation(SPACE, torch.zeros(5, 4), ops, scores)
    node1 = cell["nodes"][1]
    assert [x["input"] for x in node1["inputs"]] == [0, 2]
    assert [x["op"] for x in node1["inputs"]] == [PRIMS[best[2]], PRIMS[best[4]]]
    assert node1["inputs"][1]["perturbation"]["input_drop"] == 0.08
    assert node1["perturbation"] == {"runner_up": "s1", "runner_up_drop": 0.01}
    assert new_combos == [True, False, True, False]
    assert sum(map(sum, new_ops)) == 4


def test_the_spec_and_genotype_json_carry_the_log():
    rows, best = _planted()
    ops, combos = SPACE.full_masks()
    spec = ArchSpec({c: CellMasks(ops, combos) for c in CELL_TYPES})
    state = {f"{p}_{c}": torch.zeros(n) for c in CELL_TYPES for p, n in (("beta", 4),)}
    state.update({f"alpha_{c}": torch.zeros(5, 4) for c in CELL_TYPES})
    scores = {c: _scores(rows, [70, 75, 79, 78]) for c in CELL_TYPES}
    derived = perturbation_spec(SPACE, spec, state, scores)
    d = derived.to_dict()
    back = ArchSpec.from_json(derived.to_json())
    assert back.to_dict() == d
    first = d["genotype"]["normal"]["nodes"][0]["inputs"][0]
    assert first["op"] == PRIMS[best[0]] and first["perturbation"]["drop"] == 0.2
    # inspect's lines: every chosen input and every scored node, drops in points
    lines = derived.genotype.by_perturbation
    assert lines[0] == "normal s2 <- s0: sep_conv_3x3 drop 20 (runner-up skip_connect 2)"
    assert "normal s3: inputs s0, s1 drop 5 (runner-up s1, s2 2)" in lines
    assert len(lines) == 2 * (4 + 1)
    # a genotype without the log writes what it always did
    plain = Genotype.from_dict({c: {"nodes": [], "concat": [2]} for c in CELL_TYPES})
    assert "perturbation" not in str(plain.to_dict()) and plain.by_perturbation == []
