"""The derivation by perturbation (``derive_rule: perturbation``) as a component: the
clients score the supernet with each live op of each edge (and each input entry of each
node) removed on their own eval splits, the scores travel on the auxiliary channel, and
the server derives from them (``nas.perturbation``) instead of from the argmax of the
logits. DARTS-PT: Wang, Cheng, Chen, Tang and Hsieh, "Rethinking Architecture Selection
in Differentiable NAS", ICLR 2021, section 4 (perturbation-based architecture selection).

Which model is scored. The clients of the derivation round (the last search round) score
the global model they receive, before their local steps: every client then scores the
same network, so the pooled scores are one federated evaluation of that network's
perturbations on the union of the clients' eval splits (as ``run.val_every`` measures
it). Scoring each client's own locally-trained model instead would average the
perturbation effects of different networks, none of which is the supernet being derived.
The derived supernet is this round's average, one round of local steps later than the
scored one; Wang et al. also select on a supernet that is then tuned further.

What a client sends. Per scored configuration its number of correctly classified eval
images and its summed cross-entropy, and its number of eval images, each divided by its
FedAvg weight w: the channel's weighted mean times the round's summed weight is then the
pooled sum over the round's clients, so a client with a small (or empty) eval split
counts for its images, not its train split. Counts are rounded back to integers on the
server, so the ranking is the same on any rank count (the workers' pre-reduced float64
sums differ in the last bits). The entries are declared in every search round, as zeros
outside the derivation round (the runtime sizes the round's buffers from the model alone;
a few hundred float64 per round), and scored only in that round.

Cost. One forward over the client's eval split per (cell type, edge, live op other than
``none``) and per (cell type, input entry), in ``torch.no_grad`` and eval mode (batch
statistics, as every evaluation here), plus the unperturbed baseline: at the CPU
configs' 3-node cells 2 x (9 x 7 + 9) + 1 = 145 passes at most (FedNAS always; FedMetaNAS
before any pruning, which usually leaves far fewer ops), on 100 eval images: about a
minute per client on a busy 2-core machine, once per run.

Simplifications of DARTS-PT, all for cost. One-shot: Wang et al. decide one edge at a
time and fine-tune the supernet for a few epochs between decisions (progressive); here
every edge and node is scored once on the same supernet, which in a federation would
cost a round of local training per edge. Topology on the full mixture: Wang et al.
score a node's inputs after its ops are discretised; here they are scored with every
live op in the mixture, in the same round. Input entries are eq. 8's input combinations
(FedMetaNAS: a combination removed, the node's remaining combinations renormalised) or
whole edges (FedNAS's sum: the edge removed from the node's sum).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.nn import functional as F

from ...flat import State
from ...nas import CELL_TYPES, ArchSpec, CellSpace, SearchNetwork
from ...nas.mixing import relaxed_weights
from ...nas.perturbation import CellScores, perturbation_spec
from ..configs.perturbation import DeriveRuleConfig
from .training import device_of

#: Prefix of the aux entries (none is a global state entry).
PREFIX = "pt."


def _real_ops(space: CellSpace, op_mask: torch.Tensor) -> list[tuple[int, int]]:
    """The scored (edge, op) pairs: live ops other than ``none`` on edges the mixture
    uses (``none`` is never chosen, so removing it is not scored)."""
    return [(e, k) for e, k in op_mask.nonzero().tolist() if space.primitives[k] != "none"]


class PerturbationScoring:
    """The clients' side and the server's side of ``derive_rule: perturbation`` for a
    method's section (a ``DeriveRuleConfig``); inert (no aux entries, no scoring) for
    ``derive_rule: logits``, so such runs and their checkpoints are as before."""

    def __init__(self, conf: DeriveRuleConfig, space: CellSpace):
        self.on = conf.derive_rule == "perturbation"
        self.space = space

    def aux_shapes(self, spec: ArchSpec | dict) -> dict[str, tuple[int, ...]]:
        """The aux entries of a round on a model of ``spec``: per cell type the op scores
        [E, P, 2] and the input scores [I, 2] (correct, loss), and the baseline [3] (eval
        images, correct, loss), all per unit of FedAvg weight; none when off or once the
        architecture is derived."""
        spec = ArchSpec.of(spec)
        if not self.on or spec.genotype is not None:
            return {}
        s = self.space
        inputs = s.num_combos if spec.inputs == "combinations" else s.num_edges
        out: dict[str, tuple[int, ...]] = {f"{PREFIX}base": (3,)}
        for c in CELL_TYPES:
            out[f"{PREFIX}ops_{c}"] = (s.num_edges, len(s.primitives), 2)
            out[f"{PREFIX}inputs_{c}"] = (inputs, 2)
        return out

    # ------------------------------------------------------------ clients

    def client_aux(
        self,
        net: SearchNetwork,
        spec: ArchSpec | dict,
        x: torch.Tensor,
        y: torch.Tensor,
        weight: float,
        temperature: float,
        due: bool,
    ) -> State:
        """A client's entries: the scores of ``net`` (the received global model, at
        ``temperature``, without noise) on ``(x, y)`` divided by its
        FedAvg ``weight`` when ``due`` (the derivation round), zeros otherwise; {} when
        the rule is off. Leaves ``net`` in eval mode with its parameters untouched."""
        shapes = self.aux_shapes(spec)
        out = {k: torch.zeros(s, dtype=torch.float64) for k, s in shapes.items()}
        if not shapes or not due or len(y) == 0:
            return out
        spec = ArchSpec.of(spec)
        net.set_sampling(temperature, None)
        scale = 1.0 / float(weight)
        n, correct, loss = score(net, x, y, {})
        out[f"{PREFIX}base"] = torch.tensor([n, correct, loss], dtype=torch.float64) * scale
        for c in CELL_TYPES:
            ops, ins = out[f"{PREFIX}ops_{c}"], out[f"{PREFIX}inputs_{c}"]
            for e, k, mixing in op_removals(net, c):
                _, ops[e, k, 0], ops[e, k, 1] = score(net, x, y, {c: mixing})
            for i, mixing in input_removals(net, c, spec.inputs):
                _, ins[i, 0], ins[i, 1] = score(net, x, y, {c: mixing})
            ops *= scale
            ins *= scale
        return out

    # ------------------------------------------------------------ server

    @staticmethod
    def split(averaged: Mapping[str, torch.Tensor]) -> tuple[State, State]:
        """(the averaged state without this channel's entries, the entries); ``averaged``
        itself when it holds none (the rule off, or after the derivation)."""
        if not any(k.startswith(PREFIX) for k in averaged):
            return averaged, {}
        state = {k: v for k, v in averaged.items() if not k.startswith(PREFIX)}
        return state, {k: v for k, v in averaged.items() if k.startswith(PREFIX)}

    def derive(
        self,
        spec: ArchSpec | dict,
        state: Mapping[str, torch.Tensor],
        aux: Mapping[str, torch.Tensor],
        total_weight: float,
    ) -> tuple[ArchSpec, dict[str, float]]:
        """The derived spec (``nas.perturbation.perturbation_spec``) from the round's
        averaged ``aux`` and summed client weight, and the metrics ``pt_base_acc`` (the
        scored supernet's pooled accuracy), ``pt_drop_mean`` (mean accuracy drop of the
        chosen ops) and ``pt_same_as_logits`` (the fraction of chosen edges whose op is
        also the logits' choice)."""
        arch = ArchSpec.of(spec)
        scores = pooled_scores(aux, total_weight)
        if scores["normal"].n == 0:
            raise ValueError(
                "derive_rule: perturbation but the derivation round's clients have no eval "
                "images to score on"
            )
        derived = perturbation_spec(self.space, arch, state, scores)
        return derived, self._metrics(arch, derived, state, scores)

    def _metrics(self, before: ArchSpec, derived: ArchSpec, state, scores) -> dict[str, float]:
        drops, same = [], []
        real = torch.tensor([p != "none" for p in self.space.primitives])
        for c in CELL_TYPES:
            alpha = state[f"alpha_{c}"].detach().double()
            live = torch.tensor(before.masks[c].ops) & real
            drops += [
                x.perturbation["drop"] for n in derived.genotype.cells[c].nodes for x in n.inputs
            ]
            chosen = torch.tensor(derived.masks[c].ops)
            for e in chosen.any(dim=1).nonzero().flatten().tolist():
                by_logit = int(alpha[e].masked_fill(~live[e], float("-inf")).argmax())
                same.append(float(bool(chosen[e, by_logit])))
        return {
            "pt_base_acc": scores["normal"].correct / scores["normal"].n,
            "pt_drop_mean": sum(drops) / len(drops),
            "pt_same_as_logits": sum(same) / len(same),
        }


def pooled_scores(aux: Mapping[str, torch.Tensor], total_weight: float) -> dict[str, CellScores]:
    """Per cell type the ``CellScores`` pooled over the round's clients from the averaged
    entries (each a weighted mean of per-weight sums: times ``total_weight`` the plain
    sum); counts rounded to integers."""
    w = float(total_weight)
    n, correct, loss = (aux[f"{PREFIX}base"].double() * w).tolist()
    out = {}
    for c in CELL_TYPES:
        ops = aux[f"{PREFIX}ops_{c}"].double() * w
        ins = aux[f"{PREFIX}inputs_{c}"].double() * w
        out[c] = CellScores(
            round(n),
            round(correct),
            loss,
            ops[..., 0].round().long(),
            ops[..., 1],
            ins[..., 0].round().long(),
            ins[..., 1],
        )
    return out


# ---------------------------------------------------------------- the masking


Mixing = tuple[torch.Tensor, list[torch.Tensor]]


@torch.no_grad()
def score(
    net: SearchNetwork, x: torch.Tensor, y: torch.Tensor, override: Mapping[str, Mixing]
) -> tuple[int, int, float]:
    """(images, correct, summed cross-entropy) of ``net`` on ``(x, y)`` in eval mode, one
    batch, each cell type mixing by ``override`` where given and by the network's own
    deterministic weights otherwise."""
    net.eval()
    dev = device_of(net)
    own = {c: override.get(c) or net.mixing_weights(c) for c in CELL_TYPES}
    out = net(x.to(dev), mixing=lambda layer, kind: own[kind])
    yd = y.to(dev)
    loss = F.cross_entropy(out, yd, reduction="sum").double()
    return len(y), int((out.argmax(1) == yd).sum()), float(loss)


@torch.no_grad()
def op_removals(net: SearchNetwork, cell: str):
    """For each scored (edge, op) of a cell type: (edge, op, the cell's mixing with that
    op removed and the edge's other live ops renormalised, as DARTS-PT masks an op)."""
    op_w, coefs = net.mixing_weights(cell)
    alpha = getattr(net, f"alpha_{cell}").detach()
    mask = getattr(net, f"op_mask_{cell}")
    live = _live_edges(net, cell)
    for e, k in _real_ops(net.space, mask):
        if e not in live:
            continue
        row = mask[e].clone()
        row[k] = False
        w = op_w.clone()
        # an edge left with no live op contributes nothing (softmax of nothing is NaN)
        w[e] = relaxed_weights(alpha[e], net.temperature, None, row) if row.any() else 0.0
        yield e, k, (w, coefs)


def _live_edges(net: SearchNetwork, cell: str) -> set[int]:
    """The edges a surviving combination uses (the others have no module)."""
    combos = getattr(net, f"combo_mask_{cell}").tolist()
    live = net.space.live_edges(combos)
    return {net.space.edge(j, i) for j in range(net.space.nodes) for i in live[j]}


@torch.no_grad()
def input_removals(net: SearchNetwork, cell: str, inputs: str):
    """For each scored input entry of a cell type: (entry index, the cell's mixing with it
    removed). ``combinations``: each live combination of a node with more than one,
    the node's other combinations renormalised (eq. 8); ``sum``: each live edge, its
    coefficient in the node's sum set to 0."""
    space = net.space
    op_w, coefs = net.mixing_weights(cell)
    cm = getattr(net, f"combo_mask_{cell}")
    if inputs == "sum":
        live = _live_edges(net, cell)
        for j in range(space.nodes):
            for i in range(space.inputs_of(j)):
                if space.edge(j, i) not in live:
                    continue
                new = [t.clone() for t in coefs]
                new[j][i] = 0.0
                yield space.edge(j, i), (op_w, new)
        return
    beta = getattr(net, f"beta_{cell}").detach()
    for j, combos in enumerate(space.combos):
        lo = space.combo_offsets[j]
        if int(cm[lo : lo + len(combos)].sum()) < 2:
            continue
        for c in range(len(combos)):
            if not bool(cm[lo + c]):
                continue
            m = cm.clone()
            m[lo + c] = False
            new = list(coefs)
            new[j] = space.input_coefficients(beta, net.temperature, None, m)[j]
            yield lo + c, (op_w, new)
