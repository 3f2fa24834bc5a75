"""FedNAS (He et al. 2021): federated MiLeNAS search, hard pruning, federated retraining.

Search stage: DARTS's softmax relaxation (no Gumbel noise; each node sums its edges).
On every client, each step takes a training batch and a validation batch, both from
the client's own train split (split in two halves per round), and makes the MiLeNAS
mixed-level update:

    alpha <- Adam(grad_alpha L_val(w, alpha) + lambda * grad_alpha L_train(w, alpha))
    w     <- SGD(grad_w L_train(w, alpha))        (momentum, weight decay, clipped)

The server averages w and alpha by sample counts (the runtime's FedAvg; no clipping
of alpha gradients and a true average of the alphas, unlike FedML's implementation).
With ``arch_update: server`` (``common.server_opt``) the clients' alpha step is plain
SGD (``client_arch_lr``, the same L2 term) and the server steps the alphas by
FedAdam/FedYogi on their averaged change in every search round; the derivation reads
the stepped alphas.

Hard pruning: after ``search_rounds`` the server derives the DARTS genotype (per node
the k strongest inputs, per edge the strongest op other than ``none``), builds the
discrete network and initialises it from scratch; the remaining rounds retrain it
federatedly with plain SGD (FedAvg). The runtime records the supernet's accuracy
before the switch and the pruned network's with the inherited weights (paper Table 3).

``derive_rule: perturbation`` (``common.perturbation``; DARTS-PT, Wang et al., ICLR 2021):
the last search round's clients score the received supernet on their eval splits with
each live op, and each edge of each node's sum, removed; the derivation keeps per node
the k inputs and per edge the op whose removal hurts most (one-shot).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..flat import State
from ..nas import ArchSpec, darts_spec
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .common.derived import recipe_epochs
from .common.maml import clip_grad_norm, foreach
from .common.perturbation import PerturbationScoring
from .common.schedules import cosine_lr
from .common.server_opt import ServerArchOptimizer
from .common.steploop import DeviceSums, step_loop
from .common.streams import BatchStream
from .common.supernet import SupernetMethod, state_of
from .common.training import evaluate, minibatches


def milenas_grads(
    loss_train: torch.Tensor,
    loss_val: torch.Tensor,
    weights: Sequence[nn.Parameter],
    arch: Sequence[nn.Parameter],
    lam: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(grad_w L_train, grad_alpha L_val + lam * grad_alpha L_train), both at the current
    point (MiLeNAS's mixed-level gradient, first order)."""
    gw = torch.autograd.grad(loss_train, list(weights), retain_graph=True, allow_unused=True)
    ga = torch.autograd.grad(loss_val + lam * loss_train, list(arch), allow_unused=True)
    return (
        [torch.zeros_like(p) if g is None else g for g, p in zip(gw, weights)],
        [torch.zeros_like(p) if g is None else g for g, p in zip(ga, arch)],
    )


class FedNAS(SupernetMethod):
    name = "fednas"
    inputs = "sum"
    client_metrics = ("train_loss", "val_loss", "local_acc")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.arch_opt = ServerArchOptimizer(cfg.algorithm.fednas)
        self.pt = PerturbationScoring(cfg.algorithm.fednas, self.space)

    def init_global(self) -> GlobalModel:
        model = super().init_global()
        model.server_state.update(self.arch_opt.init_state(model.state))
        return model

    def aux_shapes(self, model: GlobalModel) -> dict[str, tuple[int, ...]]:
        return self.pt.aux_shapes(model.spec)

    @property
    def search_rounds(self) -> int:
        return self.cfg.algorithm.fednas.search_rounds or max(1, self.cfg.run.rounds // 2)

    def stage(self, round_: int) -> str:
        return "search" if round_ < self.search_rounds else "retrain"

    def can_stop(self, round_: int) -> bool:
        return self.stage(round_) == "retrain"

    def lr(self, round_: int) -> float:
        f, s = self.cfg.algorithm.fednas, self.search_rounds
        if round_ < s:
            return cosine_lr(round_, s, f.lr, f.lr_min)
        return cosine_lr(round_ - s, self.cfg.run.rounds - s, f.lr, f.lr_min)

    # ------------------------------------------------------------ client
    def client_update(
        self, model: GlobalModel, data: ClientData, ctx: RoundContext, client_state: State | None
    ) -> ClientResult:
        net = self._net(model)
        # derive_rule: perturbation: the last search round's clients score the received
        # supernet before their local steps (common.perturbation says why)
        due = ctx.stage == "search" and ctx.round + 1 == self.search_rounds
        scores = self.pt.client_aux(
            net, model.spec, data.eval_x, data.eval_y, float(data.num_train), 1.0, due
        )
        net.set_sampling(1.0, None)  # plain softmax(alpha): no Gumbel noise
        net.train()
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "fednas.batches")
        if ctx.stage == "search":
            train_loss, val_loss = self._search(net, data, ctx, g)
        else:
            # retraining: the evaluation recipe, as every genotype is retrained
            f, a = self.cfg.algorithm.fednas, self.cfg.algorithm
            train_loss = recipe_epochs(
                net,
                data,
                self.lr(ctx.round),
                f.momentum,
                f.weight_decay,
                a.batch_size,
                a.local_epochs,
                g,
            )
            val_loss = float("nan")
        local_acc = float("nan")
        every = self.cfg.algorithm.fednas.local_eval_every
        if ctx.is_due(every):
            _, local_acc = evaluate(net, data.eval_x, data.eval_y)
        return ClientResult(
            state_of(net),
            float(data.num_train),
            {"train_loss": train_loss, "val_loss": val_loss, "local_acc": local_acc},
            aux=scores,
        )

    def _search(self, net, data: ClientData, ctx: RoundContext, g: torch.Generator):
        f, a = self.cfg.algorithm.fednas, self.cfg.algorithm
        weights, arch = net.weight_parameters(), net.arch_parameters()
        w_opt = torch.optim.SGD(
            weights, lr=self.lr(ctx.round), momentum=f.momentum, weight_decay=f.weight_decay
        )
        if self.arch_opt.on:  # the server keeps the moments (common.server_opt)
            a_opt = torch.optim.SGD(arch, lr=f.client_arch_lr, weight_decay=f.arch_weight_decay)
        else:
            a_opt = torch.optim.Adam(
                arch, lr=f.arch_lr, betas=tuple(f.arch_betas), weight_decay=f.arch_weight_decay
            )
        foreach(w_opt, a_opt)
        # The validation half comes from the client's own data, never the server's test set.
        perm = torch.randperm(data.num_train, generator=g)
        half = max(1, data.num_train // 2)
        tr, va = perm[:half], perm[half:] if data.num_train > 1 else perm
        # every draw staged before the loop, in the loop's order (``common.streams``)
        batches = BatchStream(data.train_x, data.train_y, data.augment)
        for _ in range(a.local_epochs):
            val_batches = minibatches(len(va), a.batch_size, g)
            for i, bt in enumerate(minibatches(len(tr), a.batch_size, g)):
                batches.add(tr[bt], g)
                batches.add(va[val_batches[i % len(val_batches)]], g)
        batches.stage()
        steps = len(batches) // 2
        sums = DeviceSums(2, data.train_x.device)  # (train, validation) losses
        with step_loop():
            for i in range(steps):
                xt, yt = batches.batch(2 * i)
                xv, yv = batches.batch(2 * i + 1)
                loss_t = F.cross_entropy(net(xt), yt)
                loss_v = F.cross_entropy(net(xv), yv)
                gw, ga = milenas_grads(loss_t, loss_v, weights, arch, f.milenas_lambda)
                if f.grad_clip > 0:
                    clip_grad_norm(gw, f.grad_clip)
                for p, gr in zip(weights, gw):
                    p.grad = gr
                for p, gr in zip(arch, ga):
                    p.grad = gr
                a_opt.step()
                w_opt.step()
                sums.add(loss_t, loss_v)
        t_sum, v_sum = sums.read()
        return t_sum / steps, v_sum / steps

    # ------------------------------------------------------------ server
    def server_step(
        self, model: GlobalModel, averaged: State, metrics: dict[str, float], ctx: RoundContext
    ) -> GlobalModel:
        averaged, scores = self.pt.split(averaged)
        spec, state, server = model.spec, averaged, model.server_state
        if self.arch_opt.on and ctx.stage == "search":
            # FedAdam/FedYogi on the averaged change of the alphas; the derivation reads
            # the stepped ones
            state, moments, moved = self.arch_opt.step(model.state, averaged, server)
            server = {**server, **moments}
            metrics.update(moved)
        if ctx.stage == "search" and ctx.round + 1 == self.search_rounds:
            if scores:
                derived, picked = self.pt.derive(spec, state, scores, metrics["client_weight"])
                spec = derived.to_dict()
                metrics.update(picked)
            else:
                spec = darts_spec(self.space, ArchSpec.of(spec), state).to_dict()
            # Retraining starts from scratch: a fresh, seeded initialisation.
            state = state_of(self.fresh(spec, "fednas.retrain.init"))
        metrics.update(lr=self.lr(ctx.round), **self.arch_metrics(spec, state, 1.0))
        return GlobalModel(spec, state, server)

    def evaluate(self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        net = self._net(model)
        net.set_sampling(1.0, None)
        return evaluate(net, x, y)
