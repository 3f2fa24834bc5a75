"""Structure of a searched cell: edges, input combinations, masks, pruning and genotypes.

A cell has two inputs (the previous two cells' outputs, states 0 and 1) and
``nodes`` intermediate nodes; node j (0-based) reads states 0..j+1, one edge
each, so the cell has sum_j (j+2) edges, each with one logit per primitive
(``alpha``). Eq. 8: node j mixes all k-combinations of its inputs with a second
set of logits (``beta``, one per combination). Because
sum_c Z_c * sum_{i in c} e_i = sum_i (sum_{c containing i} Z_c) * e_i,
every edge output is computed once and weighted by its combination coefficient.

Masks record what soft pruning removed (for good): ``op_mask`` (edges x ops) and
``combo_mask`` (all combinations of all nodes, flattened). They are part of the
global model's spec, identical for every client.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import torch

from .mixing import relaxed_weights
from .operations import PRIMITIVES


@dataclass(frozen=True)
class CellSpace:
    nodes: int
    k: int
    primitives: tuple[str, ...] = PRIMITIVES

    def inputs_of(self, j: int) -> int:
        return j + 2

    def k_of(self, j: int) -> int:
        return min(self.k, self.inputs_of(j))

    @cached_property
    def edge_offsets(self) -> list[int]:
        return [sum(self.inputs_of(t) for t in range(j)) for j in range(self.nodes)]

    @property
    def num_edges(self) -> int:
        return sum(self.inputs_of(j) for j in range(self.nodes))

    def edge(self, j: int, i: int) -> int:
        return self.edge_offsets[j] + i

    def edge_nodes(self, e: int) -> tuple[int, int]:
        """(node j, input i) of edge index ``e`` (the inverse of ``edge``)."""
        for j in reversed(range(self.nodes)):
            if e >= self.edge_offsets[j]:
                return j, e - self.edge_offsets[j]
        raise IndexError(e)

    @cached_property
    def combos(self) -> list[list[tuple[int, ...]]]:
        """Per node, its k-combinations of input states, in lexicographic order."""
        return [list(itertools.combinations(range(self.inputs_of(j)), self.k_of(j)))
                for j in range(self.nodes)]

    @cached_property
    def combo_offsets(self) -> list[int]:
        return [sum(len(c) for c in self.combos[:j]) for j in range(self.nodes)]

    @property
    def num_combos(self) -> int:
        return sum(len(c) for c in self.combos)

    def full_masks(self) -> tuple[list[list[bool]], list[bool]]:
        return ([[True] * len(self.primitives) for _ in range(self.num_edges)],
                [True] * self.num_combos)

    # ---------------------------------------------------------- weights
    def op_weights(self, alpha: torch.Tensor, temperature: float, noise, op_mask) -> torch.Tensor:
        """Eq. 1 per edge: (edges, ops)."""
        return relaxed_weights(alpha, temperature, noise, op_mask)

    def input_coefficients(self, beta: torch.Tensor, temperature: float, noise,
                           combo_mask: torch.Tensor) -> list[torch.Tensor]:
        """Eq. 8 per node: coefficient of each input = sum of Z over combinations holding it."""
        out = []
        z_all = beta if noise is None else beta + noise
        for j, combos in enumerate(self.combos):
            lo = self.combo_offsets[j]
            seg = slice(lo, lo + len(combos))
            z = relaxed_weights(z_all[seg], temperature, None, combo_mask[seg])
            incidence = self.incidence(j).to(z)
            out.append(incidence @ z)
        return out

    def incidence(self, j: int) -> torch.Tensor:
        """(inputs, combinations) 0/1 matrix: input i belongs to combination c (built once
        per space; read-only)."""
        return self._incidences[j]

    @cached_property
    def _incidences(self) -> list[torch.Tensor]:
        out = []
        for j in range(self.nodes):
            m = torch.zeros(self.inputs_of(j), len(self.combos[j]))
            for c, combo in enumerate(self.combos[j]):
                m[list(combo), c] = 1.0
            out.append(m)
        return out

    def live_edges(self, combo_mask: list[bool]) -> list[set[int]]:
        """Per node, the inputs that still appear in a surviving combination."""
        live = []
        for j, combos in enumerate(self.combos):
            lo = self.combo_offsets[j]
            live.append({i for c, combo in enumerate(combos) if combo_mask[lo + c]
                         for i in combo})
        return live


# ------------------------------------------------------------------ pruning


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


def prune(space: CellSpace, alpha: torch.Tensor, beta: torch.Tensor | None,
          op_mask: list[list[bool]], combo_mask: list[bool], op_gap: float,
          combo_gap: float) -> Pruned:
    """Soft pruning on the learned distribution (section 4.4): drop an op whose logit lies
    more than ``op_gap`` below the strongest live op of its edge, i.e. whose probability
    under softmax(alpha) (lambda = 1) is below exp(-op_gap) times the strongest's; the same
    for input combinations with ``combo_gap`` on beta. The annealed temperature plays no
    part: dividing by lambda would let the schedule, not the alphas, decide. A gap of 0
    (or less) prunes nothing.

    Never drops an edge's strongest op other than ``none`` (so every edge keeps a real
    op) nor a node's strongest combination. ``beta=None``: combinations stay as they are.
    """
    none = space.primitives.index("none") if "none" in space.primitives else -1
    om = torch.tensor(op_mask)
    gap = _gaps(alpha, om)
    keep = om & ~(gap > op_gap) if op_gap > 0 else om.clone()
    real = alpha.detach().double().masked_fill(~om, float("-inf"))
    if none >= 0:
        real[:, none] = float("-inf")
    best = real.argmax(dim=1)
    keep[torch.arange(len(best)), best] = True
    removed = [(e, k, float(gap[e, k])) for e, k in (om & ~keep).nonzero().tolist()]
    cm = torch.tensor(combo_mask)
    ckeep = cm.clone()
    removed_c: list[tuple[int, int, float]] = []
    if beta is not None and combo_gap > 0:
        for j, combos in enumerate(space.combos):
            seg = slice(space.combo_offsets[j], space.combo_offsets[j] + len(combos))
            g = _gaps(beta[seg], cm[seg])
            node_keep = cm[seg] & ~(g > combo_gap)
            node_keep[int(g.argmin())] = True
            ckeep[seg] = node_keep
            removed_c += [(j, c, float(g[c])) for c in (cm[seg] & ~node_keep).nonzero()
                          .flatten().tolist()]
    return Pruned(keep.tolist(), ckeep.tolist(), removed, removed_c)


def logit_signal(logits: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How much a set of architecture logits has learned, over the rows that have a live
    entry (rows along the last dimension, masked entries left out):

    - ``range``: mean of (largest - smallest) live logit: the spread;
    - ``gap``: mean of (largest - second largest) live logit (0 for a single survivor):
      the margin of the decision the derivation takes;
    - ``agreement``: mean of the largest live probability of softmax(logits). By the
      Gumbel-max theorem, argmax(logits + G) is distributed as softmax(logits) at any
      temperature, so this is exactly the probability that a Gumbel sample's argmax
      equals the deterministic argmax used for pruning and evaluation (1/K when nothing
      has been learned over K live entries, 1 once the choice is certain).
    """
    z = logits.detach().double()
    rows = mask.any(dim=-1)
    z, m = z[rows], mask[rows]
    if not len(z):
        return {"range": float("nan"), "gap": float("nan"), "agreement": float("nan")}
    hi = z.masked_fill(~m, float("-inf"))
    lo = z.masked_fill(~m, float("inf"))
    top2 = hi.topk(min(2, z.shape[-1]), dim=-1).values
    second = top2[:, -1] if z.shape[-1] > 1 else top2[:, 0]
    gap = torch.where(torch.isfinite(second), top2[:, 0] - second, torch.zeros_like(second))
    p = relaxed_weights(z, 1.0, None, m)
    return {"range": float((hi.max(-1).values - lo.min(-1).values).mean()),
            "gap": float(gap.mean()), "agreement": float(p.max(-1).values.mean())}


def sample_genotype(space: CellSpace, generator: torch.Generator
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


def finalize(space: CellSpace, alpha: torch.Tensor, beta: torch.Tensor,
             op_mask: list[list[bool]], combo_mask: list[bool]) -> tuple[dict, list, list]:
    """The genotype (strongest surviving combination per node, strongest real op per
    edge in it, from probabilities softmax(log alpha) and softmax(beta) over the
    survivors) and the masks that keep exactly that. Op rows of edges outside the
    chosen combinations are all False: those edges get no module at all."""
    om, cm = torch.tensor(op_mask), torch.tensor(combo_mask)
    p_ops = _masked_probs(alpha, om, 1.0)
    # Reported: each chosen op's probability softmax(log alpha) over all the edge's ops.
    p_all = torch.softmax(alpha.detach().double(), dim=-1)
    real = p_ops.clone()
    if "none" in space.primitives:
        real[:, space.primitives.index("none")] = -1.0
    new_op = torch.zeros_like(om)
    new_combo = torch.zeros_like(cm)
    nodes = []
    for j, combos in enumerate(space.combos):
        lo = space.combo_offsets[j]
        q = _masked_probs(beta[lo:lo + len(combos)], cm[lo:lo + len(combos)], 1.0)
        c = int(q.argmax())
        new_combo[lo + c] = True
        chosen = []
        for i in combos[c]:
            e = space.edge(j, i)
            k = int(real[e].masked_fill(~om[e], -1.0).argmax())
            new_op[e, k] = True
            chosen.append({"op": space.primitives[k], "input": i,
                           "p_op": round(float(p_all[e, k]), 4)})
        p_combo = torch.softmax(beta[lo:lo + len(combos)].detach().double(), dim=-1)
        nodes.append({"inputs": chosen, "p_combo": round(float(p_combo[c]), 4)})
    return {"nodes": nodes, "concat": list(range(2, space.nodes + 2))}, \
        new_op.tolist(), new_combo.tolist()


def derive_darts(space: CellSpace, alpha: torch.Tensor, op_mask: list[list[bool]]
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
    return {"nodes": nodes, "concat": list(range(2, space.nodes + 2))}, new_op.tolist(), \
        new_combo


def genotype_str(genotype: dict) -> str:
    """Compact text: per cell type, per node its (op <- input) pairs."""
    lines = []
    for cell in ("normal", "reduce"):
        if cell not in genotype:
            continue
        nodes = [" + ".join(f"{x['op']}(s{x['input']})" for x in n["inputs"])
                 for n in genotype[cell]["nodes"]]
        lines.append(f"{cell}: " + "; ".join(f"s{j + 2} = {n}" for j, n in enumerate(nodes)))
    return "\n".join(lines)


def entropy(weights: torch.Tensor) -> float:
    """Mean Shannon entropy (nats) of the rows of a probability matrix."""
    w = weights.clamp_min(1e-30)
    return float(-(weights * w.log()).sum(-1).mean())
