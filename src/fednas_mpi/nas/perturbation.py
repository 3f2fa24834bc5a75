"""Perturbation-based selection of the final architecture (DARTS-PT: Wang, Cheng, Chen,
Tang and Hsieh, "Rethinking Architecture Selection in Differentiable NAS", ICLR 2021).

Wang et al. show that the magnitude of an op's logit does not say how much the supernet
relies on it (skip connections win by logit while the supernet hardly needs them); they
choose per edge the op whose removal from the mixture hurts the supernet's accuracy most,
and per node the inputs whose removal hurts most. This module is the selection given the
scores; the scoring itself (a supernet forward with one op of one edge, or one input
entry of one node, removed and the mixture renormalised over the rest) is
``algorithms.common.perturbation``.

The scores are pooled over the clients' eval splits: counts of correctly classified
images (integers, so equal accuracies compare equal whatever the order the clients'
sums were added in) and summed cross-entropies. Ranking, most needed first: fewest
correct with the entry removed (the largest accuracy drop), then the largest loss with
it removed (compared at 10 significant digits, so that float rounding of the sums never
decides), then the largest logit, then the lowest index.

One-shot, not progressive: Wang et al. decide one edge at a time and fine-tune the
supernet between decisions; here every edge and node is scored once on the same
supernet (``DeriveRuleConfig`` says why), and the topology is scored on the full mixture,
not on a supernet whose ops were already discretised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .space import CellSpace
from .spec import CELL_TYPES, ArchSpec, CellMasks, Genotype


@dataclass(frozen=True)
class CellScores:
    """One cell type's perturbation scores, pooled over the clients' eval splits: ``n``
    images, ``correct`` of them right and ``loss`` the summed cross-entropy of the
    unperturbed supernet; ``op_correct``/``op_loss`` [E, P] the same with op k of edge e
    removed; ``input_correct``/``input_loss`` the same with one input entry removed: [C]
    input combinations (eq. 8's relaxation) or [E] edges (DARTS's plain sum). Entries
    that were not scored hold anything: the masks say which were."""

    n: int
    correct: int
    loss: float
    op_correct: torch.Tensor
    op_loss: torch.Tensor
    input_correct: torch.Tensor
    input_loss: torch.Tensor

    def drop(self, correct: int | torch.Tensor) -> float:
        """Accuracy lost (a fraction) when the supernet is left with ``correct`` right."""
        return (self.correct - int(correct)) / max(self.n, 1)

    def loss_rise(self, loss: float | torch.Tensor) -> float:
        """Mean cross-entropy gained when the summed loss becomes ``loss``."""
        return (float(loss) - self.loss) / max(self.n, 1)


def _tie(x: float) -> float:
    # losses are float sums added in an order that depends on the rank count
    return float(f"{float(x):.10g}")


def rank(
    correct: Sequence[int],
    loss: Sequence[float],
    logits: Sequence[float],
    candidates: Sequence[int],
) -> list[int]:
    """``candidates`` ordered by how much removing each hurts, most first: fewest
    ``correct`` left, then the largest ``loss``, then the largest logit, then the
    lowest index (see the module docstring)."""
    return sorted(
        candidates,
        key=lambda k: (int(correct[k]), -_tie(loss[k]), -float(logits[k]), k),
    )


def _choice(scores: CellScores, correct, loss, ranked: list[int], name) -> dict:
    """The log of one decision: the chosen entry's accuracy drop and loss rise, the
    runner-up and its drop (None without a rival)."""
    best = ranked[0]
    out = {
        "drop": round(scores.drop(correct[best]), 6),
        "loss_rise": round(scores.loss_rise(loss[best]), 6),
        "runner_up": None,
        "runner_up_drop": None,
    }
    if len(ranked) > 1:
        out["runner_up"] = name(ranked[1])
        out["runner_up_drop"] = round(scores.drop(correct[ranked[1]]), 6)
    return out


def _real_ops(space: CellSpace, op_mask: torch.Tensor, e: int) -> list[int]:
    return [k for k, p in enumerate(space.primitives) if p != "none" and bool(op_mask[e, k])]


def select_op(
    space: CellSpace, alpha: torch.Tensor, op_mask: torch.Tensor, scores: CellScores, e: int
) -> tuple[int, dict]:
    """Edge ``e``'s op: the live op other than ``none`` whose removal hurts most, and the
    log of the decision (``_choice``)."""
    cands = _real_ops(space, op_mask, e)
    if not cands:
        raise ValueError(f"edge {e} has no live op other than none")
    ranked = rank(
        scores.op_correct[e].tolist(), scores.op_loss[e].tolist(), alpha[e].tolist(), cands
    )
    return ranked[0], _choice(
        scores, scores.op_correct[e], scores.op_loss[e], ranked, lambda k: space.primitives[k]
    )


def finalize_perturbation(
    space: CellSpace,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    op_mask: list[list[bool]],
    combo_mask: list[bool],
    scores: CellScores,
) -> tuple[dict, list, list]:
    """``derive.finalize`` by perturbation (input combinations, eq. 8): per node the live
    combination whose removal hurts most (a node with one live combination keeps it
    unscored), per edge of it the op whose removal hurts most. Same return format as
    ``finalize``; each chosen input and each scored node carries ``perturbation`` (the
    drop, loss rise, runner-up and its drop) beside the logits' ``p_op``/``p_combo``."""
    om, cm = torch.tensor(op_mask), torch.tensor(combo_mask)
    p_all = torch.softmax(alpha.detach().double(), dim=-1)
    a, b = alpha.detach().double(), beta.detach().double()
    new_op, new_combo = torch.zeros_like(om), torch.zeros_like(cm)
    nodes = []
    for j, combos in enumerate(space.combos):
        lo = space.combo_offsets[j]
        live = [c for c in range(len(combos)) if bool(cm[lo + c])]
        node: dict = {}
        if len(live) > 1:
            ic, il = scores.input_correct[lo:], scores.input_loss[lo:]
            ranked = rank(ic.tolist(), il.tolist(), b[lo:].tolist(), live)
            node["perturbation"] = _choice(
                scores, ic, il, ranked, lambda c, combos=combos: [f"s{i}" for i in combos[c]]
            )
            c = ranked[0]
        else:
            c = live[0]
        new_combo[lo + c] = True
        chosen = []
        for i in combos[c]:
            e = space.edge(j, i)
            k, why = select_op(space, a, om, scores, e)
            new_op[e, k] = True
            chosen.append(
                {
                    "op": space.primitives[k],
                    "input": i,
                    "p_op": round(float(p_all[e, k]), 4),
                    "perturbation": why,
                }
            )
        p_combo = torch.softmax(b[lo : lo + len(combos)], dim=-1)
        nodes.append({"inputs": chosen, "p_combo": round(float(p_combo[c]), 4), **node})
    return (
        {"nodes": nodes, "concat": list(range(2, space.nodes + 2))},
        new_op.tolist(),
        new_combo.tolist(),
    )


def derive_darts_perturbation(
    space: CellSpace, alpha: torch.Tensor, op_mask: list[list[bool]], scores: CellScores
) -> tuple[dict, list, list]:
    """``derive.derive_darts`` by perturbation (DARTS's plain sum): per node the k inputs
    whose edge's removal hurts most (ties: the edge's strongest real op by logit), per
    chosen edge the op whose removal hurts most. Each chosen input carries
    ``perturbation`` (its op's decision, plus ``input_drop``: the drop when its whole
    edge is removed), each node with an unchosen live input ``perturbation`` naming the
    strongest of them (``runner_up``, ``runner_up_drop``)."""
    om = torch.tensor(op_mask)
    a = alpha.detach().double()
    p = torch.softmax(a.masked_fill(~om, float("-inf")), dim=-1)
    strength = a.masked_fill(~om, float("-inf"))
    if "none" in space.primitives:
        strength[:, space.primitives.index("none")] = float("-inf")
    strength = strength.max(dim=1).values
    new_op = torch.zeros_like(om)
    new_combo = [False] * space.num_combos
    nodes = []
    for j in range(space.nodes):
        e0 = space.edge(j, 0)
        live = [i for i in range(space.inputs_of(j)) if _real_ops(space, om, e0 + i)]
        ic, il = scores.input_correct[e0:], scores.input_loss[e0:]
        ranked = rank(ic.tolist(), il.tolist(), strength[e0:].tolist(), live)
        k_j = space.k_of(j)
        chosen = tuple(sorted(ranked[:k_j]))
        new_combo[space.combo_offsets[j] + space.combos[j].index(chosen)] = True
        picks = []
        for i in chosen:
            e = e0 + i
            k, why = select_op(space, a, om, scores, e)
            new_op[e, k] = True
            why["input_drop"] = round(scores.drop(ic[i]), 6)
            picks.append(
                {
                    "op": space.primitives[k],
                    "input": i,
                    "p_op": round(float(p[e, k]), 4),
                    "perturbation": why,
                }
            )
        node: dict = {"inputs": picks}
        if len(ranked) > k_j:
            r = ranked[k_j]
            node["perturbation"] = {
                "runner_up": f"s{r}",
                "runner_up_drop": round(scores.drop(ic[r]), 6),
            }
        nodes.append(node)
    return {"nodes": nodes, "concat": list(range(2, space.nodes + 2))}, new_op.tolist(), new_combo


def perturbation_spec(
    space: CellSpace,
    spec: ArchSpec,
    state: Mapping[str, torch.Tensor],
    scores: Mapping[str, CellScores],
) -> ArchSpec:
    """The derivation of both cell types by perturbation: ``finalize_perturbation`` for a
    spec with input combinations, ``derive_darts_perturbation`` for DARTS's sum."""
    masks, cells = {}, {}
    for c in CELL_TYPES:
        m = spec.masks[c]
        if spec.inputs == "combinations":
            cells[c], ops, combos = finalize_perturbation(
                space, state[f"alpha_{c}"], state[f"beta_{c}"], m.ops, m.combos, scores[c]
            )
        else:
            cells[c], ops, combos = derive_darts_perturbation(
                space, state[f"alpha_{c}"], m.ops, scores[c]
            )
        masks[c] = CellMasks(ops, combos)
    return spec.derived(masks, Genotype.from_dict(cells))
