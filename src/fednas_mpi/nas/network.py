"""The DARTS-style search network with Gumbel-softmax ops and input combinations.

Architecture parameters are registered parameters (``alpha_normal``,
``alpha_reduce``: edges x ops, the learned log alpha of eq. 1; ``beta_normal``,
``beta_reduce``: one logit per input combination of eq. 8), so they travel with
the weights in the flat state buffer and FedAvg averages them.

Pruned ops and edges that no surviving combination uses have no module at all:
they are neither computed nor sent. A network whose masks keep one op per edge
and one combination per node is the discrete (derived) network; its mixing
weights are exactly 1 and it inherits the searched weights unchanged.

``SearchNetwork.run_cells`` is the one forward (stem, cells, pooling, classifier) with a
hook for each cell's computation; ``forward`` runs every cell on mixing weights (its own,
or per layer from a ``mixing`` hook: FedPNAS's personalised cells), and
``single_path.path_forward`` runs one op per edge through the same loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..kernels import mix
from .compiled import COMPILE_MODES, compile_forward
from .grouped import build_plan, grouped_cell_forward
from .mixing import gumbel_noise
from .operations import OPS, FactorizedReduce, ReLUConvBN, batch_norm
from .space import CellSpace
from .spec import CELL_TYPES, CellMasks

Mixing = tuple[torch.Tensor, list[torch.Tensor]]  # (op weights (edges, ops), coefs per node)
MixingHook = Callable[[int, str], Mixing]  # (layer, cell type) -> that cell's mixing
EXECUTIONS = ("auto", "grouped", "reference")
CellForward = Callable[[int, "SearchCell", torch.Tensor, torch.Tensor], torch.Tensor]


class SearchCell(nn.Module):
    def __init__(
        self,
        space: CellSpace,
        c_pp: int,
        c_p: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
        op_mask: list[list[bool]],
        combo_mask: list[bool],
    ):
        super().__init__()
        self.space, self.reduction, self.channels = space, reduction, c
        self.execution = "auto"  # see SearchNetwork.set_execution
        self.compiled: Callable | None = None  # see SearchNetwork.set_compile
        self._plan = None
        self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0)
        live = space.live_edges(combo_mask)
        self.edges = nn.ModuleDict()
        for j in range(space.nodes):
            for i in sorted(live[j]):
                e = space.edge(j, i)
                stride = 2 if reduction and i < 2 else 1
                ops = nn.ModuleDict()
                for k, name in enumerate(space.primitives):
                    if op_mask[e][k] and OPS[name] is not None:
                        ops[name] = OPS[name](c, stride)
                self.edges[f"{j}_{i}"] = ops
        # The grouped forward's mix indices live on the network's device as buffers (moved
        # by ``.to``), so a forward never copies them from the host (issue 27).
        try:
            self._plan = build_plan(self)
            edge_idx, op_idx = _mix_index(self._plan, space)
        except ValueError as e:  # ops that do not group: only the reference forward runs
            self._plan, edge_idx, op_idx = e, torch.zeros(0, dtype=torch.long), None
        self.register_buffer("mix_edge_index", edge_idx, persistent=False)
        self.register_buffer("mix_op_index", op_idx, persistent=False)
        # the reference forward's (node, live op) order, for its mixing weights in one product
        ref_edge, ref_op, self._ref_sizes = _reference_index(self)
        self.register_buffer("ref_edge_index", ref_edge, persistent=False)
        self.register_buffer("ref_op_index", ref_op, persistent=False)

    @property
    def kind(self) -> str:
        """The cell type whose logits and masks this cell uses."""
        return "reduce" if self.reduction else "normal"

    def grouped_plan(self, device: torch.device | None = None):
        """The grouped forward's plan (``nas.grouped``) and its mix indices (on the cell's
        device), built with the cell: a cell's live ops never change."""
        if isinstance(self._plan, ValueError):
            raise self._plan
        return self._plan, (self.mix_edge_index, self.mix_op_index)

    def uses_grouped(self, x: torch.Tensor) -> bool:
        """Whether a forward on ``x`` runs grouped: ``grouped``, or ``auto`` on the CPU
        (where it was measured faster; the GPU keeps the reference until measured there)."""
        return self.execution == "grouped" or (self.execution == "auto" and x.device.type == "cpu")

    def forward(self, s0, s1, op_w: torch.Tensor, coefs: list[torch.Tensor]) -> torch.Tensor:
        # evaluation (no autograd) stays eager: no second graph per cell for a measurement
        if self.compiled is not None and torch.is_grad_enabled():
            return self.compiled(self, s0, s1, op_w, coefs)
        return self.eager_forward(s0, s1, op_w, coefs)

    def eager_forward(self, s0, s1, op_w: torch.Tensor, coefs: list[torch.Tensor]) -> torch.Tensor:
        """The cell's output by its execution (grouped or op by op), without compiling."""
        if self.uses_grouped(s1):
            return grouped_cell_forward(self, s0, s1, op_w, coefs)
        states = [self.pre0(s0), self.pre1(s1)]
        # coefs[j][i] * op_w[e, k] of every live op in one product, not one per op (issue
        # 27); the live entries only: a dead edge's op weights may be NaN
        ws = (torch.cat(coefs)[self.ref_edge_index] * op_w.flatten()[self.ref_op_index]).split(
            self._ref_sizes
        )
        for j in range(self.space.nodes):
            outs = []
            for i in range(self.space.inputs_of(j)):
                ops = self.edges[f"{j}_{i}"] if f"{j}_{i}" in self.edges else None
                if ops is None:
                    continue
                outs += [ops[name](states[i]) for name in self.space.primitives if name in ops]
            # A node-level weighted sum over all its (edge, op) outputs: one mix per node.
            states.append(mix(outs, ws[j]))
        return torch.cat(states[2:], dim=1)


def _mix_index(plan, space: CellSpace) -> tuple[torch.Tensor, torch.Tensor]:
    """(edge, flat (edge, op)) index pairs of the plan's mix; the zero slot maps to the
    appended zeros."""
    flat = [f for L in plan for row in L.index for f in row]
    nk, zero = len(space.primitives), space.num_edges * len(space.primitives)
    edges = [f // nk if f < zero else space.num_edges for f in flat]
    return torch.tensor(edges, dtype=torch.long), torch.tensor(flat, dtype=torch.long)


def _reference_index(cell: SearchCell) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Per node in the reference forward's order (input i, then op k), the edge e (its
    coefficient's place in the nodes' concatenated coefficients) and the flat e * ops + k
    of each live op, and the number of live ops per node."""
    space, nk = cell.space, len(cell.space.primitives)
    edges, flats, sizes = [], [], []
    for j in range(space.nodes):
        n = 0
        for i in range(space.inputs_of(j)):
            ops, e = cell.edges[f"{j}_{i}"] if f"{j}_{i}" in cell.edges else {}, space.edge(j, i)
            live = [k for k, name in enumerate(space.primitives) if name in ops]
            edges += [e] * len(live)
            flats += [e * nk + k for k in live]
            n += len(live)
        sizes.append(n)
    return torch.tensor(edges, dtype=torch.long), torch.tensor(flats, dtype=torch.long), sizes


class SearchNetwork(nn.Module):
    """Stem, ``layers`` cells (reductions at 1/3 and 2/3 of the depth), classifier."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        init_channels: int,
        layers: int,
        space: CellSpace,
        stem_multiplier: int,
        masks: Mapping[str, CellMasks | Mapping],
        inputs: str = "combinations",
        execution: str = "auto",
    ):
        super().__init__()
        if inputs not in ("combinations", "sum"):
            raise ValueError(f"inputs must be 'combinations' or 'sum', not {inputs!r}")
        self.space, self.inputs = space, inputs
        # per cell type, a spec's ``CellMasks`` (or their dict form)
        self.masks = masks = {c: CellMasks.of(masks[c]) for c in CELL_TYPES}
        e, k, n = space.num_edges, len(space.primitives), space.num_combos
        self.alpha_normal = nn.Parameter(torch.zeros(e, k))
        self.alpha_reduce = nn.Parameter(torch.zeros(e, k))
        if inputs == "combinations":  # "sum" (DARTS) has no input-combination logits
            self.beta_normal = nn.Parameter(torch.zeros(n))
            self.beta_reduce = nn.Parameter(torch.zeros(n))
        for cell in ("normal", "reduce"):
            self.register_buffer(f"op_mask_{cell}", torch.tensor(masks[cell].ops), persistent=False)
            self.register_buffer(
                f"combo_mask_{cell}", torch.tensor(masks[cell].combos), persistent=False
            )
        for j in range(space.nodes):  # resident on the device: no copy per forward
            self.register_buffer(f"incidence_{j}", space.incidence(j).clone(), persistent=False)
        c_cur = stem_multiplier * init_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_cur, 3, padding=1, bias=False), batch_norm(c_cur, affine=True)
        )
        c_pp, c_p, c = c_cur, c_cur, init_channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        reductions = {layers // 3, 2 * layers // 3}
        for layer in range(layers):
            reduction = layer in reductions
            if reduction:
                c *= 2
            kind = "reduce" if reduction else "normal"
            self.cells.append(
                SearchCell(
                    space,
                    c_pp,
                    c_p,
                    c,
                    reduction,
                    reduction_prev,
                    masks[kind].ops,
                    masks[kind].combos,
                )
            )
            reduction_prev = reduction
            c_pp, c_p = c_p, space.nodes * c
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)
        self.temperature = 1.0
        self.generator: torch.Generator | None = None
        self.set_execution(execution)

    def set_execution(self, execution: str) -> None:
        """How the mixture forward computes its cells (``kernels.supernet``): ``grouped``
        (``nas.grouped``: all live ops of a level as a few large ops), ``reference`` (op
        module by op module), ``auto`` (grouped on the CPU). Equal to float rounding; the
        single-path forward always runs op by op."""
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, not {execution!r}")
        for cell in self.cells:
            cell.execution = execution

    def set_compile(self, mode: str) -> None:
        """``kernels.compile``: ``cells`` compiles each cell's training forward on its own
        (``nas.compiled``), once per cell: a cell keeps its compiled forward when this is
        called again (a cached network reused); ``off`` runs every cell eagerly."""
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, not {mode!r}")
        for cell in self.cells:
            if mode == "off":
                cell.compiled = None
            elif cell.compiled is None:
                cell.compiled = compile_forward(SearchCell.eager_forward)

    def arch_parameters(self) -> list[nn.Parameter]:
        betas = [self.beta_normal, self.beta_reduce] if self.inputs == "combinations" else []
        return [self.alpha_normal, self.alpha_reduce, *betas]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def set_sampling(
        self,
        temperature: float,
        generator: torch.Generator | Callable[[torch.Size], torch.Tensor] | None,
    ) -> None:
        """Gumbel noise from ``generator`` in each forward (or from a staged stream, see
        ``_noise``); None = deterministic weights."""
        self.temperature, self.generator = float(temperature), generator

    def mixing_weights(
        self,
        cell: str,
        noisy: bool = False,
        alpha: torch.Tensor | None = None,
        beta: torch.Tensor | None = None,
    ) -> Mixing:
        """(op weights (edges, ops), input coefficients per node) of a cell type: eq. 1 over
        the ops, eq. 8 over the input combinations (or DARTS's sum). ``alpha`` and ``beta``
        given: those logits in place of the network's own (a client's personalised ones),
        under the same masks, temperature and noise stream."""
        if alpha is None:
            alpha, beta = getattr(self, f"alpha_{cell}"), getattr(self, f"beta_{cell}", None)
        op_noise = combo_noise = None
        if noisy and self.generator is not None:
            op_noise = self._noise(alpha)
            if beta is not None:
                combo_noise = self._noise(beta)
        op_w = self.space.op_weights(
            alpha, self.temperature, op_noise, getattr(self, f"op_mask_{cell}")
        )
        combo_mask = getattr(self, f"combo_mask_{cell}")
        incidences = [getattr(self, f"incidence_{j}") for j in range(self.space.nodes)]
        if self.inputs == "sum":
            # DARTS: a node sums its live edges (those in a surviving combination).
            coefs = [
                (incidences[j].to(op_w) @ combo_mask[lo : lo + len(c)].to(op_w)).clamp(max=1.0)
                for j, (lo, c) in enumerate(zip(self.space.combo_offsets, self.space.combos))
            ]
        else:
            coefs = self.space.input_coefficients(
                beta, self.temperature, combo_noise, combo_mask, incidences
            )
        return op_w, coefs

    def _noise(self, logits: torch.Tensor) -> torch.Tensor:
        """Gumbel noise of ``logits``' shape: drawn now from a generator, or the next
        tensor of a stream staged on the device before the step loop (a callable taking
        the shape: ``algorithms.common.streams``), in the same order."""
        if isinstance(self.generator, torch.Generator):
            return gumbel_noise(logits.shape, self.generator, logits.dtype, logits.device)
        return self.generator(logits.shape)

    def run_cells(self, x: torch.Tensor, cell_forward: CellForward) -> torch.Tensor:
        """Stem, each cell as ``cell_forward(layer, cell, s0, s1)`` computes it, pooling and
        classifier: the forward every adapter (mixture, single path, personalised) shares."""
        s0 = s1 = self.stem(x)
        for layer, cell in enumerate(self.cells):
            s0, s1 = s1, cell_forward(layer, cell, s0, s1)
        return self.classifier(self.pool(s1).flatten(1))

    def forward(self, x: torch.Tensor, mixing: MixingHook | None = None) -> torch.Tensor:
        """The mixture forward. ``mixing(layer, cell type)`` gives a cell's mixing weights;
        without it every cell uses the network's own, Gumbel-noised in training mode."""
        if mixing is None:
            weights = {c: self.mixing_weights(c, self.training) for c in CELL_TYPES}

            def mixing(layer: int, kind: str) -> Mixing:
                return weights[kind]

        return self.run_cells(
            x, lambda layer, cell, s0, s1: cell(s0, s1, *mixing(layer, cell.kind))
        )
