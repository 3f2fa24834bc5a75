"""A searched network as plain torch modules, ready for ``torch.export``.

The search network mixes its ops through ``kernels.mix`` (possibly our C++ library),
recomputes its mixing weights from the logits in every forward and normalises with batch
statistics. ``DeployNet`` is the same function with all of that frozen: each node of each
cell is a fixed list of terms ``weight * op(state_i)`` (the searched op modules, copied),
summed in the order the search network sums them. A term list comes from one of two
plans, matching how the methods evaluate:

- ``mixture_plan``: every op the masks keep, weighted by the deterministic mixing
  weights (FedMetaNAS, FedNAS, FedPNAS; after the final derivation one term per chosen
  input with weight exactly 1);
- ``path_plan``: one op per edge, weight 1 (the argmax child or a client's subnet:
  FedDSNAS, FedRLNAS, PerFedRLNAS); ``none`` contributes nothing.

``recalibrate`` then swaps every batch-statistics BatchNorm for one with running
statistics estimated on the data it is given, so the network runs in eval mode on any
batch, one image included.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn

#: per node, its terms (input state, op name, weight)
NodePlan = list[tuple[int, str, torch.Tensor]]
CellPlan = list[NodePlan]


class DeployCell(nn.Module):
    def __init__(
        self,
        pre0: nn.Module,
        pre1: nn.Module,
        plan: CellPlan,
        ops: Sequence[Sequence[nn.Module]],
        reduction: bool,
    ):
        super().__init__()
        self.pre0, self.pre1, self.reduction = pre0, pre1, reduction
        self.inputs = [[i for i, _, _ in node] for node in plan]
        self.ops = nn.ModuleList(nn.ModuleList(node_ops) for node_ops in ops)
        for j, node in enumerate(plan):
            w = torch.stack([t for _, _, t in node]) if node else torch.zeros(0)
            self.register_buffer(f"weights_{j}", w.detach().clone())

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for j, (inputs, ops) in enumerate(zip(self.inputs, self.ops)):
            w = getattr(self, f"weights_{j}")
            total = None
            for k, (i, op) in enumerate(zip(inputs, ops)):
                term = w[k] * op(states[i])
                total = term if total is None else total + term
            if total is None:  # every edge of the node is `none`: a zero state
                ref = states[1][:, :, ::2, ::2] if self.reduction else states[1]
                total = torch.zeros_like(ref)
            states.append(total)
        return torch.cat(states[2:], dim=1)


class DeployNet(nn.Module):
    """Stem, frozen cells, global pooling, classifier (the search network's layout)."""

    def __init__(self, stem: nn.Module, cells: Sequence[DeployCell], classifier: nn.Module):
        super().__init__()
        self.stem = stem
        self.cells = nn.ModuleList(cells)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.pool(s1).flatten(1))


def mixture_plan(net, cell, op_w: torch.Tensor, coefs: list[torch.Tensor]) -> CellPlan:
    """The terms ``SearchCell.forward`` mixes, with the weights it would use (terms of
    weight exactly 0, i.e. pruned, are left out: they add nothing)."""
    space = net.space
    plan: CellPlan = []
    for j in range(space.nodes):
        node: NodePlan = []
        for i in range(space.inputs_of(j)):
            key = f"{j}_{i}"
            if key not in cell.edges:
                continue
            e = space.edge(j, i)
            for k, name in enumerate(space.primitives):
                if name in cell.edges[key]:
                    w = (coefs[j][i] * op_w[e, k]).detach()
                    if float(w) != 0.0:
                        node.append((i, name, w))
        plan.append(node)
    return plan


def path_plan(net, cell, choice: Sequence[int]) -> CellPlan:
    """The terms ``single_path.path_forward`` sums for one op per edge (weight 1)."""
    space = net.space
    one = torch.ones((), dtype=net.alpha_normal.dtype)
    plan: CellPlan = []
    for j in range(space.nodes):
        node: NodePlan = []
        for i in range(space.inputs_of(j)):
            key = f"{j}_{i}"
            name = space.primitives[int(choice[space.edge(j, i)])]
            if key in cell.edges and name in cell.edges[key]:
                node.append((i, name, one))
        plan.append(node)
    return plan


@torch.no_grad()
def freeze(net, plans: Sequence[CellPlan]) -> DeployNet:
    """A ``DeployNet`` computing ``net`` with one plan per cell (copies of its modules,
    on the CPU; ``net`` itself is not changed)."""
    cells = []
    for cell, plan in zip(net.cells, plans):
        ops = [
            [copy.deepcopy(cell.edges[f"{j}_{i}"][name]).cpu() for i, name, _ in node]
            for j, node in enumerate(plan)
        ]
        cells.append(
            DeployCell(
                copy.deepcopy(cell.pre0).cpu(),
                copy.deepcopy(cell.pre1).cpu(),
                [[(i, n, w.cpu()) for i, n, w in node] for node in plan],
                ops,
                cell.reduction,
            )
        )
    out = DeployNet(copy.deepcopy(net.stem).cpu(), cells, copy.deepcopy(net.classifier).cpu())
    return out.eval()


def describe(net, plans: Sequence[CellPlan]) -> list[dict]:
    """JSON-able view of the plans: per cell, per node its (input, op, weight) terms."""
    return [
        {
            "reduction": bool(cell.reduction),
            "nodes": [
                [{"input": i, "op": name, "weight": round(float(w), 6)} for i, name, w in node]
                for node in plan
            ],
        }
        for cell, plan in zip(net.cells, plans)
    ]


def batch_stat_norms(module: nn.Module) -> list[tuple[nn.Module, str, nn.BatchNorm2d]]:
    """(parent, attribute, layer) of every BatchNorm2d that normalises with the current
    batch's statistics also in eval mode (the search space's)."""
    return [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.BatchNorm2d) and not child.track_running_stats
    ]


@torch.no_grad()
def recalibrate(module: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Give every batch-statistics BatchNorm of ``module`` running statistics: the mean
    over ``batches`` of each layer's batch mean and (unbiased) batch variance, measured
    in a forward pass where the layers still normalise with batch statistics (as in the
    search). Afterwards the module is in eval mode and normalises with those statistics.
    Returns the number of samples seen (0 if the module had no such layer)."""
    found = batch_stat_norms(module)
    if not found:
        return 0
    for parent, name, old in found:
        new = nn.BatchNorm2d(
            old.num_features,
            eps=old.eps,
            momentum=None,
            affine=old.affine,
            track_running_stats=True,
        )
        if old.affine:
            new.weight.copy_(old.weight)
            new.bias.copy_(old.bias)
        setattr(parent, name, new)
    module.train()
    seen = 0
    for xb in batches:
        module(xb)
        seen += len(xb)
    module.eval()
    if seen == 0:
        raise ValueError("BatchNorm recalibration got no data")
    return seen
