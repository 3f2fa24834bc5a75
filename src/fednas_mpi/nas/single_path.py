"""Single-path forward through a ``SearchNetwork``: one op per edge, only that op runs.

``choices[cell][e]`` is the index of the op edge ``e`` uses in every cell of that type
(the architecture of DSNAS's sampled child, of an RL-sampled subnet, or of the argmax
child, ``derive.argmax_choices``). The op modules of the other candidates are not
touched: their weights get no gradient (``grad`` stays None), their BN statistics do
not move. ``none`` (or an op
without a module) contributes zero; a node whose edges all contribute zero is zero.

With ``noise`` (per cell type, Gumbel noise of the logits' shape), every edge's output
goes through ``kernels.gumbel_mix(hard=True)``: the DSNAS estimator, which returns the
sampled op's output unchanged and sends <dL/dZ_s, o_s> * (onehot(s) - softmax(alpha))
to that edge's logits. The choices must then be ``sample_choices(net, noise)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..kernels import gumbel_mix
from ..kernels.reference import masked_logits
from .network import SearchCell, SearchNetwork
from .spec import CELL_TYPES

Choices = Mapping[str, Sequence[int]]


def sample_choices(net: SearchNetwork, noise: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    """The ops argmax(alpha + noise) picks per edge (a draw from softmax(alpha)): every
    edge of both cell types in one argmax and one read to the host (``hard_index`` row by
    row, without a read per edge)."""
    picks = torch.stack(
        [
            masked_logits(
                getattr(net, f"alpha_{c}").detach() + noise[c], getattr(net, f"op_mask_{c}")
            ).argmax(-1)
            for c in CELL_TYPES
        ]
    ).tolist()
    return dict(zip(CELL_TYPES, picks))


def path_forward(
    net: SearchNetwork,
    x: torch.Tensor,
    choices: Choices,
    noise: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``net``'s forward (``run_cells``) with each cell running only its chosen ops."""
    return net.run_cells(
        x,
        lambda layer, cell, s0, s1: _cell(
            net,
            cell,
            cell.kind,
            s0,
            s1,
            choices[cell.kind],
            None if noise is None else noise[cell.kind],
        ),
    )


def _cell(
    net: SearchNetwork,
    cell: SearchCell,
    kind: str,
    s0,
    s1,
    choice: Sequence[int],
    noise: torch.Tensor | None,
) -> torch.Tensor:
    space = net.space
    states = [cell.pre0(s0), cell.pre1(s1)]
    alpha, mask = getattr(net, f"alpha_{kind}"), getattr(net, f"op_mask_{kind}")
    for j in range(space.nodes):
        total = None
        for i in range(space.inputs_of(j)):
            key = f"{j}_{i}"
            if key not in cell.edges:
                continue
            e = space.edge(j, i)
            k = int(choice[e])
            name = space.primitives[k]
            if name not in cell.edges[key]:
                continue  # the zero op: contributes nothing (and no logit gradient)
            out = cell.edges[key][name](states[i])
            if noise is not None:
                outs: list[torch.Tensor | None] = [None] * len(space.primitives)
                outs[k] = out
                out = gumbel_mix(outs, alpha[e], 1.0, noise[e], mask[e], hard=True, index=k)
            total = out if total is None else total + out
        if total is None:
            ref = states[1]
            n, c, h, w = ref.shape
            if cell.reduction:
                h, w = (h + 1) // 2, (w + 1) // 2
            total = ref.new_zeros(n, c, h, w)
        states.append(total)
    return torch.cat(states[2:], dim=1)
