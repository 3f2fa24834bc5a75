"""FedDSNAS: DSNAS's single-stage search (Hu et al. 2020), federated with FedAvg.

Client, every local step: per cell type and edge, one op s is drawn from softmax(alpha)
(as argmax(alpha + Gumbel noise)) and only that op runs (``nas.single_path``). Its output
passes through ``kernels.gumbel_mix(hard=True)``, the DSNAS estimator: the forward value
is exactly o_s and the edge's logits get (dL/dZ_s) * (onehot(s) - softmax(alpha)) with
dL/dZ_s = <dL/do_s, o_s>. Weights: SGD with momentum and weight decay; ops not sampled
in a step have ``grad is None`` (set to None before every step) and torch's SGD skips
them, so neither momentum nor weight decay moves them. Alphas: Adam.

Server: FedAvg of weights and alphas (the runtime). After the last round the argmax
child (per edge the strongest op the mask keeps, ``none`` included: such an edge is
dropped) becomes the final model with the searched weights: no retraining. The global
accuracy of every round is that argmax child's, with the current averaged weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..config import option
from ..flat import State
from ..nas import genotype_str
from ..nas.mixing import gumbel_noise
from ..nas.single_path import CELL_TYPES, argmax_choices, path_forward, sample_choices
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .maml import clip_present
from .supernet import SupernetMethod, state_of
from .training import cosine_lr, evaluate, minibatches


@dataclass(kw_only=True)
class FedDSNASConfig:
    lr: float = option(0.025, "Weights: SGD learning rate (cosine schedule over run.rounds).",
                        gt=0.0)
    lr_min: float = option(0.001, "Weights: learning rate in the last round.", ge=0.0)
    momentum: float = option(0.9, "Weights: SGD momentum (ops not sampled in a step keep their "
                                   "weights and momentum untouched).", ge=0.0, lt=1.0)
    weight_decay: float = option(3e-4, "Weights: SGD weight decay (sampled ops only).", ge=0.0)
    grad_clip: float = option(5.0, "Weights: gradient norm clip (0 = off).", ge=0.0)
    arch_lr: float = option(1e-3, "Alphas: Adam learning rate of the DSNAS estimator's "
                                   "gradient.", gt=0.0)
    arch_betas: list[float] = option([0.5, 0.999], "Alphas: Adam betas.", min_len=2)
    arch_weight_decay: float = option(1e-3, "Alphas: Adam weight decay.", ge=0.0)
    local_eval_every: int = option(1, "Evaluate the sampled clients' argmax children on their "
                                       "eval splits every N rounds (and in the last).", ge=1)


class PathModel(nn.Module):
    """A search network restricted to one fixed path (for evaluation loops)."""

    def __init__(self, net: nn.Module, choices):
        super().__init__()
        self.net, self.choices = net, choices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return path_forward(self.net, x, self.choices)


def child_genotype(space, choices, alpha: dict[str, torch.Tensor]) -> dict:
    """Genotype of a one-op-per-edge child: per node its edges whose op is not ``none``."""
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
                    picks.append({"op": space.primitives[k], "input": i,
                                  "p_op": round(float(p[e, k]), 4)})
            nodes.append({"inputs": picks})
        genotype[c] = {"nodes": nodes, "concat": list(range(2, space.nodes + 2))}
    return genotype


def child_masks(space, choices, old_masks: dict) -> dict:
    """Masks that keep exactly one op (the chosen one) per edge."""
    masks = {}
    for c in CELL_TYPES:
        ops = [[k == int(choices[c][e]) for k in range(len(space.primitives))]
               for e in range(space.num_edges)]
        masks[c] = {"ops": ops, "combos": old_masks[c]["combos"]}
    return masks


class FedDSNAS(SupernetMethod):
    name = "feddsnas"
    inputs = "sum"
    client_metrics = ("train_loss", "local_acc")

    def stage(self, round_: int) -> str:
        return "search"

    def lr(self, round_: int) -> float:
        f = self.cfg.algorithm.feddsnas
        return cosine_lr(round_, self.cfg.run.rounds, f.lr, f.lr_min)

    def init_global(self) -> GlobalModel:
        spec = self.initial_spec()
        return GlobalModel(spec, state_of(self.fresh(spec)))

    # ------------------------------------------------------------ client
    def client_update(self, model: GlobalModel, data: ClientData, ctx: RoundContext,
                      client_state: State | None) -> ClientResult:
        f, a = self.cfg.algorithm.feddsnas, self.cfg.algorithm
        net = self._net(model)
        net.train()
        weights, arch = net.weight_parameters(), net.arch_parameters()
        w_opt = torch.optim.SGD(weights, lr=self.lr(ctx.round), momentum=f.momentum,
                                weight_decay=f.weight_decay)
        a_opt = torch.optim.Adam(arch, lr=f.arch_lr, betas=tuple(f.arch_betas),
                                 weight_decay=f.arch_weight_decay)
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "feddsnas.batches")
        g_noise = torch_rng(ctx.seed, ctx.round, data.client_id, "feddsnas.gumbel")
        total, count = 0.0, 0
        for _ in range(a.local_epochs):
            for idx in minibatches(data.num_train, a.batch_size, g):
                xb = data.train_x[idx]
                if data.augment is not None:
                    xb = data.augment(xb, g)
                loss = dsnas_step(net, xb, data.train_y[idx], w_opt, a_opt, g_noise,
                                  f.grad_clip)
                total, count = total + loss * len(idx), count + len(idx)
        local_acc = float("nan")
        if ctx.is_due(f.local_eval_every):
            _, local_acc = evaluate(PathModel(net, argmax_choices(net)), data.eval_x,
                                    data.eval_y)
        return ClientResult(state_of(net), float(data.num_train),
                            {"train_loss": total / max(count, 1), "local_acc": local_acc})

    # ------------------------------------------------------------ server
    def server_step(self, model: GlobalModel, averaged: State, metrics: dict[str, float],
                    ctx: RoundContext) -> GlobalModel:
        spec, state = model.spec, averaged
        if spec.get("genotype") is None and ctx.round + 1 == self.cfg.run.rounds:
            net = self.build(spec)
            net.load_state_dict(averaged, strict=False)
            choices = argmax_choices(net)
            alpha = {c: averaged[f"alpha_{c}"] for c in CELL_TYPES}
            genotype = child_genotype(self.space, choices, alpha)
            genotype["text"] = genotype_str(genotype)
            spec = {**spec, "masks": child_masks(self.space, choices, spec["masks"]),
                    "genotype": genotype}
            state = {k: averaged[k] for k in self.build(spec).state_dict()}
        metrics.update(lr=self.lr(ctx.round), **self.arch_metrics(spec, state, 1.0))
        return GlobalModel(spec, state, model.server_state)

    def evaluate(self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[float, float]:
        net = self._net(model)
        return evaluate(PathModel(net, argmax_choices(net)), x, y)


def dsnas_step(net, x: torch.Tensor, y: torch.Tensor, w_opt: torch.optim.Optimizer,
               a_opt: torch.optim.Optimizer, g_noise: torch.Generator,
               grad_clip: float) -> float:
    """One DSNAS step: sample a path, run only it, update the sampled ops' weights and
    all logits (the estimator's gradient). Returns the loss."""
    alphas = {c: getattr(net, f"alpha_{c}") for c in CELL_TYPES}
    noise = {c: gumbel_noise(a.shape, g_noise, a.dtype, a.device) for c, a in alphas.items()}
    choices = sample_choices(net, noise)
    w_opt.zero_grad(set_to_none=True)
    a_opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(path_forward(net, x, choices, noise), y)
    loss.backward()
    clip_present(net.weight_parameters(), grad_clip)
    w_opt.step()
    a_opt.step()
    return float(loss.detach())
