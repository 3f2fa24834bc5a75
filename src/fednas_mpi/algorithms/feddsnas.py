"""FedDSNAS: DSNAS's single-stage search (Hu et al. 2020), federated with FedAvg.

Client, every local step: per cell type and edge, one op s is drawn from softmax(alpha)
(as argmax(alpha + Gumbel noise)) and only that op runs (``nas.single_path``). Its output
passes through ``kernels.gumbel_mix(hard=True)``, the DSNAS estimator: the forward value
is exactly o_s and the edge's logits get (dL/dZ_s) * (onehot(s) - softmax(alpha)) with
dL/dZ_s = <dL/do_s, o_s>. Weights: SGD with momentum and weight decay; ops not sampled
in a step have ``grad is None`` (set to None before every step) and torch's SGD skips
them, so neither momentum nor weight decay moves them. Alphas: Adam, or with
``arch_update: server`` plain SGD on the clients and FedAdam/FedYogi on the averaged
change on the server (``common.server_opt``).

Server: FedAvg of weights and alphas (the runtime). After the last round the argmax
child (per edge the strongest op the mask keeps, ``none`` included: such an edge is
dropped) becomes the final model with the searched weights: no retraining. The global
accuracy of every round is that argmax child's, with the current averaged weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from ..flat import State
from ..nas import CELL_TYPES, ArchSpec
from ..nas.mixing import gumbel_noise
from ..nas.single_path import path_forward, sample_choices
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .common.maml import clip_present, foreach
from .common.server_opt import ServerArchOptimizer
from .common.steploop import DeviceSums, host_read, step_loop
from .common.streams import BatchStream, GumbelStream
from .common.subnet import SinglePathMethod
from .common.supernet import state_of
from .common.training import evaluate, minibatches


class FedDSNAS(SinglePathMethod):
    name = "feddsnas"
    client_metrics = ("train_loss", "local_acc")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.arch_opt = ServerArchOptimizer(cfg.algorithm.feddsnas)

    def init_global(self) -> GlobalModel:
        model = super().init_global()
        model.server_state.update(self.arch_opt.init_state(model.state))
        return model

    @property
    def conf(self):
        return self.cfg.algorithm.feddsnas

    # ------------------------------------------------------------ client
    def client_update(
        self, model: GlobalModel, data: ClientData, ctx: RoundContext, client_state: State | None
    ) -> ClientResult:
        f, a = self.cfg.algorithm.feddsnas, self.cfg.algorithm
        net = self._net(model)
        net.train()
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
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "feddsnas.batches")
        g_noise = torch_rng(ctx.seed, ctx.round, data.client_id, "feddsnas.gumbel")
        # every draw staged before the loop, in the loop's order (``common.streams``)
        batches = BatchStream(data.train_x, data.train_y, data.augment)
        for _ in range(a.local_epochs):
            for idx in minibatches(data.num_train, a.batch_size, g):
                batches.add(idx, g)
        batches.stage()
        noise = GumbelStream(net, g_noise, len(batches), betas=False)
        sums = DeviceSums(1, data.train_x.device)  # the sample-weighted loss
        count = 0
        with step_loop():
            for i in range(len(batches)):
                xb, yb = batches.batch(i)
                loss = dsnas_step(net, xb, yb, w_opt, a_opt, noise, f.grad_clip)
                sums.add(loss, weight=len(yb))
                count += len(yb)
        (total,) = sums.read()
        local_acc = float("nan")
        if ctx.is_due(f.local_eval_every):
            _, local_acc = evaluate(self.argmax_model(net), data.eval_x, data.eval_y)
        return ClientResult(
            state_of(net),
            float(data.num_train),
            {"train_loss": total / max(count, 1), "local_acc": local_acc},
        )

    # ------------------------------------------------------------ server
    def server_step(
        self, model: GlobalModel, averaged: State, metrics: dict[str, float], ctx: RoundContext
    ) -> GlobalModel:
        spec, state, server = model.spec, averaged, model.server_state
        if self.arch_opt.on and ArchSpec.of(spec).genotype is None:
            # FedAdam/FedYogi on the averaged change of the alphas; the argmax child is
            # derived from the stepped ones
            state, moments, moved = self.arch_opt.step(model.state, averaged, server)
            server = {**server, **moments}
            metrics.update(moved)
        if self.derives_after(spec, ctx.round):
            spec, state = self.derive_child(spec, state)
        metrics.update(lr=self.lr(ctx.round), **self.arch_metrics(spec, state, 1.0))
        return GlobalModel(spec, state, server)

    def evaluate(self, model: GlobalModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        return evaluate(self.argmax_model(self._net(model)), x, y)


def dsnas_step(
    net,
    x: torch.Tensor,
    y: torch.Tensor,
    w_opt: torch.optim.Optimizer,
    a_opt: torch.optim.Optimizer,
    g_noise: torch.Generator | Callable[[torch.Size], torch.Tensor],
    grad_clip: float,
) -> torch.Tensor:
    """One DSNAS step: sample a path, run only it, update the sampled ops' weights and
    all logits (the estimator's gradient). ``g_noise``: a generator, or a staged stream
    (``common.streams.GumbelStream``). Returns the loss, detached, on the device."""
    alphas = {c: getattr(net, f"alpha_{c}") for c in CELL_TYPES}
    if isinstance(g_noise, torch.Generator):
        noise = {c: gumbel_noise(a.shape, g_noise, a.dtype, a.device) for c, a in alphas.items()}
    else:
        noise = {c: g_noise(a.shape) for c, a in alphas.items()}
    with host_read("single path ops"):  # the host runs only the sampled ops
        choices = sample_choices(net, noise)
    w_opt.zero_grad(set_to_none=True)
    a_opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(path_forward(net, x, choices, noise), y)
    loss.backward()
    clip_present(net.weight_parameters(), grad_clip)
    w_opt.step()
    a_opt.step()
    return loss.detach()
