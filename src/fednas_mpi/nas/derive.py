"""Every derivation of the search space: soft pruning's masks, the final (eq. 8)
derivation, DARTS's derivation, the argmax child of a single-path method, the uniform
random genotype, and restricting a state to the network of a spec.

The per-cell functions work on one cell type's logits and masks and return the cell's
genotype in its dict form (``CellGenotype.to_dict``) with the masks that keep exactly it;
the ``*_spec`` functions apply them to both cell types of an ``ArchSpec`` and return the
derived spec.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..kernels import hard_index
from .margins import Evidence, margin, outside, row_gaps, z_of
from .mixing import relaxed_weights
from .space import CellSpace
from .spec import CELL_TYPES, ArchSpec, CellMasks, Genotype


def _masked_probs(logits: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    return relaxed_weights(logits.detach().double(), temperature, None, mask)


@dataclass(frozen=True)
class Pruned:
    """What one soft-pruning step keeps, and what it removed and why: each removed op as
    (edge, op index, logit gap to the edge's best live op), each removed combination as
    (node, combination index within the node, gap to the node's best live combination)."""

    ops: list[list[bool]]
    combos: list[bool]
    removed_ops: list[tuple[int, int, float]]
    removed_combos: list[tuple[int, int, float]]


def _gaps(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per entry, how far its logit lies below the best live logit of its row (rows along
    the last dimension); masked entries get +inf."""
    z = logits.detach().double().masked_fill(~mask, float("-inf"))
    return (z.max(dim=-1, keepdim=True).values - z).masked_fill(~mask, float("inf"))


def prune(
    space: CellSpace,
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
    op_mask: list[list[bool]],
    combo_mask: list[bool],
    op_gap: float,
    combo_gap: float,
) -> Pruned:
    """Soft pruning on the learned distribution (section 4.4): drop an op whose logit lies
    more than ``op_gap`` below the strongest live op of its edge, i.e. whose probability
    under softmax(alpha) (lambda = 1) is below exp(-op_gap) times the strongest's; the same
    for input combinations with ``combo_gap`` on beta. The annealed temperature plays no
    part: dividing by lambda would let the schedule, not the alphas, decide. A gap of 0
    (or less) prunes nothing.

    Never drops an edge's strongest op other than ``none`` (so every edge keeps a real
    op) nor a node's strongest combination. ``beta=None``: combinations stay as they are.
    """
    om = torch.tensor(op_mask)
    op_out = _gaps(alpha, om) > op_gap if op_gap > 0 else torch.zeros_like(om)
    combo_out = torch.zeros(len(combo_mask), dtype=torch.bool)
    if beta is not None and combo_gap > 0:
        cm = torch.tensor(combo_mask)
        for seg in _node_segments(space):
            combo_out[seg] = _gaps(beta[seg], cm[seg]) > combo_gap
    return remove(space, alpha, beta, op_mask, combo_mask, op_out, combo_out)


def remove(
    space: CellSpace,
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
    op_mask: list[list[bool]],
    combo_mask: list[bool],
    op_out: torch.Tensor,
    combo_out: torch.Tensor,
) -> Pruned:
    """Remove the live ops and combinations a pruning rule condemned (``op_out`` [E, P],
    ``combo_out`` [C], boolean), never an edge's strongest op other than ``none`` nor a
    node's strongest combination; each removal with its logit gap to the best live entry
    of its edge (node). ``beta=None``: combinations stay as they are."""
    none = space.primitives.index("none") if "none" in space.primitives else -1
    om = torch.tensor(op_mask)
    gap = _gaps(alpha, om)
    keep = om & ~op_out
    real = alpha.detach().double().masked_fill(~om, float("-inf"))
    if none >= 0:
        real[:, none] = float("-inf")
    best = real.argmax(dim=1)
    keep[torch.arange(len(best)), best] = True
    removed = [(e, k, float(gap[e, k])) for e, k in (om & ~keep).nonzero().tolist()]
    cm = torch.tensor(combo_mask)
    ckeep = cm.clone()
    removed_c: list[tuple[int, int, float]] = []
    if beta is not None:
        for j, seg in enumerate(_node_segments(space)):
            g = _gaps(beta[seg], cm[seg])
            node_keep = cm[seg] & ~combo_out[seg]
            node_keep[int(g.argmin())] = True
            ckeep[seg] = node_keep
            removed_c += [
                (j, c, float(g[c])) for c in (cm[seg] & ~node_keep).nonzero().flatten().tolist()
            ]
    return Pruned(keep.tolist(), ckeep.tolist(), removed, removed_c)


def _node_segments(space: CellSpace) -> list[slice]:
    """Each node's slice of the flattened input combinations."""
    return [
        slice(space.combo_offsets[j], space.combo_offsets[j] + len(combos))
        for j, combos in enumerate(space.combos)
    ]


@dataclass(frozen=True)
class NoisePruned:
    """One check of the z rule (``prune_z``): what it removed (``pruned``), the standard
    error of each entry's gap to its row's best live entry (``op_se`` [E][P], ``combo_se``
    [C]; for the log) and which live entries now stand at a first strike."""

    pruned: Pruned
    op_se: list[list[float]]
    combo_se: list[float]
    op_struck: list[list[bool]]
    combo_struck: list[bool]


def prune_z(
    space: CellSpace,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    evidence: Evidence,
    op_mask: list[list[bool]],
    combo_mask: list[bool],
    op_struck: list[list[bool]],
    combo_struck: list[bool],
    z: float,
) -> NoisePruned:
    """Soft pruning outside the noise: an op (input combination) goes when the search's
    evidence for it (``nas.margins.Evidence``: the clients' summed moves) lies more than
    ``z`` standard errors below the best live op of its edge (combination of its node) at
    this check and was there at the previous check too (``*_struck``: the first strikes
    the previous check left). A strike lapses when the entry falls back inside the noise.
    The protections of ``remove`` hold on the logits: an edge keeps its strongest real
    op, a node its best combination."""
    om, cm = torch.tensor(op_mask), torch.tensor(combo_mask)
    gap, se = row_gaps(evidence.alpha, evidence.alpha_cov, om)
    op_now = outside(gap, se, z) & om
    combo_now = torch.zeros_like(cm)
    combo_se = torch.full((len(combo_mask),), math.inf, dtype=torch.float64)
    ev_b, cov_b = evidence.beta, evidence.beta_cov
    for seg in _node_segments(space):
        g, s = row_gaps(ev_b[seg][None], cov_b[seg, seg][None], cm[seg][None])
        combo_now[seg], combo_se[seg] = outside(g, s, z)[0] & cm[seg], s[0]
    r = remove(
        space,
        alpha,
        beta,
        op_mask,
        combo_mask,
        op_now & torch.tensor(op_struck),
        combo_now & torch.tensor(combo_struck),
    )
    return NoisePruned(
        r,
        se.tolist(),
        combo_se.tolist(),
        (op_now & torch.tensor(r.ops)).tolist(),
        (combo_now & torch.tensor(r.combos)).tolist(),
    )


def sample_genotype(
    space: CellSpace, generator: torch.Generator
) -> tuple[dict, list[list[bool]], list[bool]]:
    """A genotype drawn uniformly from the space (the random-architecture baseline): per
    node one of its k-combinations of inputs, per chosen edge one op other than ``none``,
    each uniformly and independently from ``generator``. Returns the genotype and the
    masks that keep exactly it (the format of ``finalize``), so it builds the same kind
    of discrete network as a searched genotype."""
    real = [k for k, name in enumerate(space.primitives) if name != "none"]
    if not real:
        raise ValueError("the space has no op other than none to sample")
    op_mask = [[False] * len(space.primitives) for _ in range(space.num_edges)]
    combo_mask = [False] * space.num_combos
    nodes = []
    for j, combos in enumerate(space.combos):
        c = int(torch.randint(len(combos), (), generator=generator))
        combo_mask[space.combo_offsets[j] + c] = True
        picks = []
        for i in combos[c]:
            k = real[int(torch.randint(len(real), (), generator=generator))]
            op_mask[space.edge(j, i)][k] = True
            picks.append({"op": space.primitives[k], "input": i})
        nodes.append({"inputs": picks})
    return ({"nodes": nodes, "concat": list(range(2, space.nodes + 2))}, op_mask, combo_mask)


def finalize(
    space: CellSpace,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    op_mask: list[list[bool]],
    combo_mask: list[bool],
    evidence: Evidence | None = None,
    z: float = 2.0,
) -> tuple[dict, list, list]:
    """The genotype (strongest surviving combination per node, strongest real op per
    edge in it, from probabilities softmax(log alpha) and softmax(beta) over the
    survivors) and the masks that keep exactly that. Op rows of edges outside the
    chosen combinations are all False: those edges get no module at all.

    With ``evidence`` (the search's summed client moves and their covariance,
    ``nas.margins.Evidence``) every chosen input and every node also reports
    ``margin_z``, the evidence gap of its choice over the runner-up (the strongest other
    live real op; the node's next live combination) in standard errors, and
    ``undecided``: whether that gap lies within ``z`` of them. The choice is kept either
    way (the argmax is still the best guess); the flag says it is one.
    """
    om, cm = torch.tensor(op_mask), torch.tensor(combo_mask)
    p_ops = _masked_probs(alpha, om, 1.0)
    # Reported: each chosen op's probability softmax(log alpha) over all the edge's ops.
    p_all = torch.softmax(alpha.detach().double(), dim=-1)
    real = p_ops.clone()
    real_ops = torch.ones(len(space.primitives), dtype=torch.bool)
    if "none" in space.primitives:
        real[:, space.primitives.index("none")] = -1.0
        real_ops[space.primitives.index("none")] = False
    new_op = torch.zeros_like(om)
    new_combo = torch.zeros_like(cm)
    nodes = []
    for j, combos in enumerate(space.combos):
        lo = space.combo_offsets[j]
        seg = slice(lo, lo + len(combos))
        q = _masked_probs(beta[seg], cm[seg], 1.0)
        c = int(q.argmax())
        new_combo[lo + c] = True
        chosen = []
        for i in combos[c]:
            e = space.edge(j, i)
            k = int(real[e].masked_fill(~om[e], -1.0).argmax())
            new_op[e, k] = True
            pick = {"op": space.primitives[k], "input": i, "p_op": round(float(p_all[e, k]), 4)}
            if evidence is not None:
                pick.update(
                    _margin_keys(evidence.alpha[e], evidence.alpha_cov[e], om[e] & real_ops, k, z)
                )
            chosen.append(pick)
        p_combo = torch.softmax(beta[seg].detach().double(), dim=-1)
        node = {"inputs": chosen, "p_combo": round(float(p_combo[c]), 4)}
        if evidence is not None:
            node.update(
                _margin_keys(evidence.beta[seg], evidence.beta_cov[seg, seg], cm[seg], c, z)
            )
        nodes.append(node)
    return (
        {"nodes": nodes, "concat": list(range(2, space.nodes + 2))},
        new_op.tolist(),
        new_combo.tolist(),
    )


def _margin_keys(
    values: torch.Tensor, cov: torch.Tensor, candidates: torch.Tensor, chosen: int, z: float
) -> dict:
    """``margin_z`` (None: no rival, or no finite ratio) and ``undecided`` of one choice."""
    m = margin(values, cov, candidates, chosen)
    if m is None:
        return {"margin_z": None, "undecided": False}
    gap, se = m
    ratio = z_of(gap, se)
    decided = bool(outside(torch.tensor(gap), torch.tensor(se), z))
    return {"margin_z": None if ratio is None else round(ratio, 2), "undecided": not decided}


def derive_darts(
    space: CellSpace, alpha: torch.Tensor, op_mask: list[list[bool]]
) -> tuple[dict, list, list]:
    """DARTS's derivation (for supernets without input-combination parameters): per
    node the k inputs whose strongest op other than ``none`` weighs most, per chosen
    edge that op; weights are softmax(alpha) over the edge's ops. Returns the genotype
    and the masks that keep exactly it (same format as ``finalize``)."""
    om = torch.tensor(op_mask)
    p = _masked_probs(alpha, om, 1.0)
    real = p.clone()
    if "none" in space.primitives:
        real[:, space.primitives.index("none")] = -1.0
    real = real.masked_fill(~om, -1.0)
    new_op = torch.zeros_like(om)
    new_combo = [False] * space.num_combos
    nodes = []
    for j in range(space.nodes):
        edges = [space.edge(j, i) for i in range(space.inputs_of(j))]
        strength = [float(real[e].max()) for e in edges]
        ranked = sorted(range(len(edges)), key=lambda i: (-strength[i], i))
        chosen = tuple(sorted(ranked[: space.k_of(j)]))
        new_combo[space.combo_offsets[j] + space.combos[j].index(chosen)] = True
        picks = []
        for i in chosen:
            e = edges[i]
            k = int(real[e].argmax())
            new_op[e, k] = True
            picks.append({"op": space.primitives[k], "input": i, "p_op": round(float(p[e, k]), 4)})
        nodes.append({"inputs": picks})
    return {"nodes": nodes, "concat": list(range(2, space.nodes + 2))}, new_op.tolist(), new_combo


def argmax_choices(net) -> dict[str, list[int]]:
    """The argmax child of a ``SearchNetwork``: per cell type and edge the strongest op its
    mask keeps (``none`` included: such an edge contributes nothing)."""
    return {
        c: [
            hard_index(row, None, m)
            for row, m in zip(getattr(net, f"alpha_{c}").detach(), getattr(net, f"op_mask_{c}"))
        ]
        for c in CELL_TYPES
    }


def child_genotype(
    space: CellSpace, choices: Mapping[str, list[int]], alpha: Mapping[str, torch.Tensor]
) -> dict:
    """Genotype of a one-op-per-edge child: per node its edges whose op is not ``none``,
    each with its probability softmax(alpha) over the edge's ops."""
    genotype: dict = {}
    for c in CELL_TYPES:
        p = torch.softmax(alpha[c].detach().double(), dim=-1)
        nodes = []
        for j in range(space.nodes):
            picks = []
            for i in range(space.inputs_of(j)):
                e = space.edge(j, i)
                k = int(choices[c][e])
                if space.primitives[k] != "none":
                    picks.append(
                        {"op": space.primitives[k], "input": i, "p_op": round(float(p[e, k]), 4)}
                    )
            nodes.append({"inputs": picks})
        genotype[c] = {"nodes": nodes, "concat": list(range(2, space.nodes + 2))}
    return genotype


def child_masks(
    space: CellSpace, choices: Mapping[str, list[int]], masks: Mapping[str, CellMasks]
) -> dict[str, CellMasks]:
    """Masks that keep exactly one op (the chosen one) per edge; combinations unchanged."""
    return {
        c: CellMasks(
            [
                [k == int(choices[c][e]) for k in range(len(space.primitives))]
                for e in range(space.num_edges)
            ],
            masks[c].combos,
        )
        for c in CELL_TYPES
    }


# ------------------------------------------------------------------ whole specs


def final_spec(
    space: CellSpace,
    spec: ArchSpec,
    state: Mapping[str, torch.Tensor],
    evidence: Mapping[str, Evidence] | None = None,
    z: float = 2.0,
) -> ArchSpec:
    """FedMetaNAS's final derivation (``finalize``) of both cell types; ``evidence``: per
    cell type the search's evidence (``nas.margins``), to report the choices' margins."""
    masks, cells = {}, {}
    for c in CELL_TYPES:
        m = spec.masks[c]
        cells[c], ops, combos = finalize(
            space,
            state[f"alpha_{c}"],
            state[f"beta_{c}"],
            m.ops,
            m.combos,
            None if evidence is None else evidence[c],
            z,
        )
        masks[c] = CellMasks(ops, combos)
    return spec.derived(masks, Genotype.from_dict(cells))


def darts_spec(space: CellSpace, spec: ArchSpec, state: Mapping[str, torch.Tensor]) -> ArchSpec:
    """DARTS's derivation (``derive_darts``) of both cell types."""
    masks, cells = {}, {}
    for c in CELL_TYPES:
        cells[c], ops, combos = derive_darts(space, state[f"alpha_{c}"], spec.masks[c].ops)
        masks[c] = CellMasks(ops, combos)
    return spec.derived(masks, Genotype.from_dict(cells))


def child_spec(
    space: CellSpace,
    spec: ArchSpec,
    choices: Mapping[str, list[int]],
    alpha: Mapping[str, torch.Tensor],
) -> ArchSpec:
    """The spec of a one-op-per-edge child (the argmax child, a client's subnet)."""
    return spec.derived(
        child_masks(space, choices, spec.masks),
        Genotype.from_dict(child_genotype(space, choices, alpha)),
    )


def sampled_spec(space: CellSpace, generator: torch.Generator) -> ArchSpec:
    """A spec of a genotype drawn uniformly (``sample_genotype``, normal cell first)."""
    masks, cells = {}, {}
    for c in CELL_TYPES:
        cells[c], ops, combos = sample_genotype(space, generator)
        masks[c] = CellMasks(ops, combos)
    return ArchSpec(masks, "combinations", Genotype.from_dict(cells))


def restrict_state(state: Mapping[str, torch.Tensor], net: torch.nn.Module) -> dict:
    """The entries of ``state`` that ``net`` (the network of a derived spec) holds, in its
    order: what is left of a supernet's state after a derivation or pruning step."""
    return {k: state[k] for k in net.state_dict()}
