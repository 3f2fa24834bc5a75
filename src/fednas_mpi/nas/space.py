"""Structure of a searched cell: edges, input combinations, masks, and what the logits learned.

A cell has two inputs (the previous two cells' outputs, states 0 and 1) and
``nodes`` intermediate nodes; node j (0-based) reads states 0..j+1, one edge
each, so the cell has sum_j (j+2) edges, each with one logit per primitive
(``alpha``). Eq. 8: node j mixes all k-combinations of its inputs with a second
set of logits (``beta``, one per combination). Because
sum_c Z_c * sum_{i in c} e_i = sum_i (sum_{c containing i} Z_c) * e_i,
every edge output is computed once and weighted by its combination coefficient.

Masks record what soft pruning removed (for good): ``op_mask`` (edges x ops) and
``combo_mask`` (all combinations of all nodes, flattened). They are part of the
global model's spec (``nas.spec``), identical for every client; ``nas.derive`` computes
them.
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
        return [
            list(itertools.combinations(range(self.inputs_of(j)), self.k_of(j)))
            for j in range(self.nodes)
        ]

    @cached_property
    def combo_offsets(self) -> list[int]:
        return [sum(len(c) for c in self.combos[:j]) for j in range(self.nodes)]

    @property
    def num_combos(self) -> int:
        return sum(len(c) for c in self.combos)

    def full_masks(self) -> tuple[list[list[bool]], list[bool]]:
        return (
            [[True] * len(self.primitives) for _ in range(self.num_edges)],
            [True] * self.num_combos,
        )

    # ---------------------------------------------------------- weights
    def op_weights(self, alpha: torch.Tensor, temperature: float, noise, op_mask) -> torch.Tensor:
        """Eq. 1 per edge: (edges, ops)."""
        return relaxed_weights(alpha, temperature, noise, op_mask)

    def input_coefficients(
        self,
        beta: torch.Tensor,
        temperature: float,
        noise,
        combo_mask: torch.Tensor,
        incidences: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Eq. 8 per node: coefficient of each input = sum of Z over combinations holding it.
        ``incidences``: the incidence matrices already on ``beta``'s device (a network keeps
        them as buffers), else copied from ``incidence``."""
        out = []
        z_all = beta if noise is None else beta + noise
        for j, combos in enumerate(self.combos):
            lo = self.combo_offsets[j]
            seg = slice(lo, lo + len(combos))
            z = relaxed_weights(z_all[seg], temperature, None, combo_mask[seg])
            incidence = (self.incidence(j) if incidences is None else incidences[j]).to(z)
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
            live.append({i for c, combo in enumerate(combos) if combo_mask[lo + c] for i in combo})
        return live


# ------------------------------------------------------------------ signal


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
    return {
        "range": float((hi.max(-1).values - lo.min(-1).values).mean()),
        "gap": float(gap.mean()),
        "agreement": float(p.max(-1).values.mean()),
    }


def entropy(weights: torch.Tensor) -> float:
    """Mean Shannon entropy (nats) of the rows of a probability matrix."""
    w = weights.clamp_min(1e-30)
    return float(-(weights * w.log()).sum(-1).mean())
